#include "kernels/cpu/matmul_transposed.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace sluice::cpu {

void gemm_transposed(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                     float* row_scratch) {
    const auto& traits = block_type(w.type);
    if (!traits.dequantize_row) fail(ErrorKind::unsupported, "no dequantiser for weight type {}", traits.name);
    for (int64_t t = 0; t < n_tokens; ++t) std::fill(y + t * y_stride, y + t * y_stride + w.cols, 0.0f);
    // Each stored row is dequantised once and accumulated into every token's output.
    for (int64_t r = 0; r < w.rows; ++r) {
        traits.dequantize_row(w.row(r), row_scratch, w.cols);
        if (w.block_scales)
            for (int64_t c = 0; c < w.cols; ++c) row_scratch[c] *= w.block_scale(r, c);
        for (int64_t t = 0; t < n_tokens; ++t) {
            const float xr = x[t * x_stride + r];
            float* __restrict out = y + t * y_stride;
            for (int64_t c = 0; c < w.cols; ++c) out[c] += xr * row_scratch[c];
        }
    }
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
