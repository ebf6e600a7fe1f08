#include "kernels/cpu/matmul_transposed.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "kernels/cpu/kernel_paths.hpp"

namespace sluice::cpu {

int64_t gemm_transposed_scratch_floats(int64_t rows, int64_t cols) { return rows * cols; }

void gemm_transposed(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                     float* scratch) {
    const auto& traits = block_type(w.type);
    if (!traits.dequantize_row) fail(ErrorKind::unsupported, "no dequantiser for weight type {}", traits.name);
    // The weights dequantised once, then every token's row is a weighted sum of theirs, in
    // register tiles of tokens x columns (the attention P . V kernel). Accumulating one stored row
    // at a time into every token's output instead loads and stores each output per row: 25-60
    // GFLOP/s against ~150 a thread.
    for (int64_t r = 0; r < w.rows; ++r) {
        float* row = scratch + r * w.cols;
        traits.dequantize_row(w.row(r), row, w.cols);
        if (w.block_scales)
            for (int64_t c = 0; c < w.cols; ++c) row[c] *= w.block_scale(r, c);
    }
    const auto& k = detail::path_kernels(cpu_path());
    constexpr int64_t kTokensPerCall = 1 << 20;  // weighted_sum counts its rows of weights in an int
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokensPerCall)
        k.weighted_sum(x + t0 * x_stride, x_stride, int(std::min(kTokensPerCall, n_tokens - t0)), scratch, w.cols, w.rows,
                       w.cols, y + t0 * y_stride, y_stride);
}

namespace {
// Rows dequantised together, so each output row receives a 64-byte run of them at a time.
constexpr int64_t kTransposeRows = 16;
}  // namespace

int64_t transpose_scratch_floats(int64_t cols) { return kTransposeRows * cols; }

void transpose_to_f32(const Matrix& w, float* out, float* scratch) {
    const auto& traits = block_type(w.type);
    if (!traits.dequantize_row) fail(ErrorKind::unsupported, "no dequantiser for weight type {}", traits.name);
    for (int64_t r0 = 0; r0 < w.rows; r0 += kTransposeRows) {
        const int64_t n = std::min(kTransposeRows, w.rows - r0);
        for (int64_t i = 0; i < n; ++i) {
            float* row = scratch + i * w.cols;
            traits.dequantize_row(w.row(r0 + i), row, w.cols);
            if (w.block_scales)
                for (int64_t c = 0; c < w.cols; ++c) row[c] *= w.block_scale(r0 + i, c);
        }
        for (int64_t c = 0; c < w.cols; ++c)
            for (int64_t i = 0; i < n; ++i) out[c * w.rows + r0 + i] = scratch[i * w.cols + c];
    }
}

}  // namespace sluice::cpu
