// Products with a matrix held as bf16 sixteen-row tiles (AVX-512 BF16), for the reduced-precision
// attention (--attention-precision bf16): the decompressed form's key expansion K_h = W_UK_h c.
//
// Why its own kernel: the GGUFs store W_UK^T per head (k_b, [kv_rank, nope], Q8_0), and turning a
// quantised matrix round loses its blocks, so the f32 route turns k_b into f32 W_UK once a layer and
// runs an f32 GEMM: ~150 GFLOP/s on 2 Zen 4 threads, ~7% of a prefill step of the batch job. Turned
// into bf16 pairs instead, vdpbf16ps does two multiply-adds a lane where an f32 FMA does one.
//
// Layout: a [rows, cols] matrix M (rows % 16 == 0, cols % 32 == 0) as rows / 16 tiles, each
// [cols / 2][16] words; word (k, i) of tile j holds M[16 j + i][2k] (low half) and M[16 j + i][2k + 1]
// (high half) as bf16. A product broadcasts a token's pair (x[2k], x[2k + 1]) against a tile's
// word k and keeps sixteen rows' sums in one vector: no horizontal sums.
// Roundings: M's values and the activations to bf16 (relative 2^-9 each); sums in f32, one
// token's in the same order whatever the other tokens of the call.
#pragma once

#include <cstdint>

#include "core/thread_pool.hpp"
#include "kernels/matrix.hpp"

namespace sluice::cpu {

// Whether this CPU has the kernel (the AVX-512 path with AVX-512 BF16) and it takes a [rows, cols] matrix.
bool bf16_tiles_supported(int64_t rows, int64_t cols);

int64_t bf16_tile_words(int64_t rows, int64_t cols);  // the packed matrix: rows * cols / 2

// The tiles of w's transpose (M = w^T, [w.cols, w.rows]), from w as stored (any type with a
// dequantiser; FP8 block scales applied). scratch: 2 * w.cols floats.
void pack_bf16_tiles_transposed(const Matrix& w, uint32_t* tiles, float* scratch);

// Words the activations take in bf16 pairs: n_tokens * cols / 2.
int64_t bf16_tiles_activation_words(int64_t n_tokens, int64_t cols);

// y[t][g y_offset + r] = sum_c M[g groups.rows + r][c] x[t][c] for the [rows, cols] matrix in `tiles`
// (groups as gemm_grouped's; groups.rows % 16 == 0 and x_offset 0: every group reads the same
// activations; groups.rows 0: one group). x_words: bf16_tiles_activation_words(n_tokens, cols).
void gemm_bf16_tiles(const uint32_t* tiles, int64_t rows, int64_t cols, const RowGroups& groups, const float* x,
                     int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride, uint32_t* x_words,
                     ThreadPool& pool);

}  // namespace sluice::cpu
