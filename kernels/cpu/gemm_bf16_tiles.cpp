// bf16 sixteen-row tiles and their product (gemm_bf16_tiles.hpp for the layout and why).
#include "kernels/cpu/gemm_bf16_tiles.hpp"

#include <immintrin.h>

#include <array>
#include <utility>

#include "core/error.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/ops.hpp"

namespace sluice::cpu {

bool bf16_tiles_supported(int64_t rows, int64_t cols) {
    return cpu_has_bf16_attention() && rows > 0 && rows % 16 == 0 && cols > 0 && cols % 32 == 0;
}

int64_t bf16_tile_words(int64_t rows, int64_t cols) { return rows * cols / 2; }
int64_t bf16_tiles_activation_words(int64_t n_tokens, int64_t cols) { return n_tokens * cols / 2; }

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma"))), apply_to = function)
#else
#pragma GCC push_options
// GCC 12 reports its own _mm512_undefined_* temporaries inside the intrinsics headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")
#endif

}  // namespace sluice::cpu
// After the target pragma, whose target its functions take.
#include "kernels/cpu/bf16_pairs_avx512.hpp"
namespace sluice::cpu {

namespace {

constexpr int kTokens = 16;  // tokens a call keeps in registers: one accumulator each

// One tile's sixteen rows for T tokens: y[t][0..16) = tile . x[t].
template <int T>
void tile_tokens(const uint32_t* tile, int64_t pairs, const uint32_t* x_words, float* y, int64_t y_stride) {
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < pairs; ++k) {
        const __m512bh w = as_bf16(_mm512_loadu_si512(tile + 16 * k));
        for (int t = 0; t < T; ++t)
            acc[t] = _mm512_dpbf16_ps(acc[t], as_bf16(_mm512_set1_epi32(int(x_words[t * pairs + k]))), w);
    }
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * y_stride, acc[t]);
}

using TileKernel = void (*)(const uint32_t*, int64_t, const uint32_t*, float*, int64_t);
template <size_t... I>
constexpr std::array<TileKernel, sizeof...(I)> tile_kernels(std::index_sequence<I...>) {
    return {&tile_tokens<int(I) + 1>...};
}
constexpr auto kTileKernels = tile_kernels(std::make_index_sequence<kTokens>());  // [T - 1]

}  // namespace

void pack_bf16_tiles_transposed(const Matrix& w, uint32_t* tiles, float* scratch) {
    const int64_t rows = w.cols, cols = w.rows;  // M's
    if (!bf16_tiles_supported(rows, cols))
        fail(ErrorKind::internal, "bf16 tiles of a [{}, {}] matrix on a CPU or shape without them", rows, cols);
    const auto& traits = block_type(w.type);
    if (!traits.dequantize_row) fail(ErrorKind::unsupported, "no dequantiser for weight type {}", traits.name);
    const int64_t pairs = cols / 2;
    float* lo = scratch;
    float* hi = scratch + rows;
    for (int64_t k = 0; k < pairs; ++k) {
        traits.dequantize_row(w.row(2 * k), lo, rows);
        traits.dequantize_row(w.row(2 * k + 1), hi, rows);
        if (w.block_scales)
            for (int64_t c = 0; c < rows; ++c) {
                lo[c] *= w.block_scale(2 * k, c);
                hi[c] *= w.block_scale(2 * k + 1, c);
            }
        for (int64_t i = 0; i < rows; i += 16)
            _mm512_storeu_si512(tiles + (i / 16 * pairs + k) * 16, pair_lanes(lo + i, hi + i));
    }
}

void gemm_bf16_tiles(const uint32_t* tiles, int64_t rows, int64_t cols, const RowGroups& groups, const float* x,
                     int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride, uint32_t* x_words,
                     ThreadPool& pool) {
    const int64_t group_rows = groups.rows > 0 ? groups.rows : rows;
    if (!bf16_tiles_supported(rows, cols) || group_rows % 16 != 0 || rows % group_rows != 0 || groups.x_offset != 0)
        fail(ErrorKind::internal, "bf16 tiles product: [{}, {}] in groups of {} rows (x offset {})", rows, cols,
             group_rows, groups.x_offset);
    if (n_tokens <= 0) return;
    const int64_t pairs = cols / 2;
    // Each token's activations as pairs once, for every tile (1/rows of the products' work).
    pool.parallel_for(n_tokens, [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t)
            for (int64_t c = 0; c < cols; c += 32)
                _mm512_storeu_si512(x_words + t * pairs + c / 2, pair_words(x + t * x_stride + c));
    });
    // A tile (16 KB at cols 512) stays in L1 while every token passes it.
    pool.parallel_for(rows / 16, [&](int64_t j0, int64_t j1, int) {
        for (int64_t j = j0; j < j1; ++j) {
            const int64_t row = 16 * j, g = row / group_rows;
            float* out = y + g * groups.y_offset + (row - g * group_rows);
            for (int64_t t = 0; t < n_tokens; t += kTokens) {
                const int64_t n = std::min<int64_t>(kTokens, n_tokens - t);
                kTileKernels[size_t(n - 1)](tiles + j * pairs * 16, pairs, x_words + t * pairs, out + t * y_stride,
                                            y_stride);
            }
        }
    });
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif

}  // namespace sluice::cpu
