// The transposed product Y[t] += W^T X[t], for weights stored [rows, cols] that a step must
// apply from the other side: MLA's absorb step q~_h = W_UK_h^T q_nope_h on an HF / legacy-GGUF
// kv_b, without rearranging the stored weights (spec §2.8); and the stored weights turned round,
// for when enough tokens share them to make rearranging them worth it.
#pragma once

#include <cstdint>

#include "kernels/matrix.hpp"

namespace sluice::cpu {

// Y[t][c] = sum_r W[r][c] * X[t][r] for t < n_tokens, c < W.cols. X: [n_tokens, W.rows] (row
// stride x_stride), Y: [n_tokens, W.cols] (row stride y_stride). scratch holds
// gemm_transposed_scratch_floats(W.rows, W.cols) floats (the weights in f32: for a head's W_UK, 256 KiB),
// except for f32 weights, which are used where they are (scratch may be null).
// Single-threaded: callers parallelise over heads.
int64_t gemm_transposed_scratch_floats(int64_t rows, int64_t cols);
void gemm_transposed(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                     float* scratch);

// out[c][r] = W[r][c] in f32 ([W.cols, W.rows], row stride W.rows): the stored weights turned
// round once, so that many tokens can take W^T through an ordinary GEMM instead (the decompressed
// form of MLA expanding keys through a k_b that holds W_UK^T). scratch holds
// transpose_scratch_floats(W.cols) floats. Single-threaded: callers parallelise over heads.
int64_t transpose_scratch_floats(int64_t cols);
void transpose_to_f32(const Matrix& w, float* out, float* scratch);

}  // namespace sluice::cpu
