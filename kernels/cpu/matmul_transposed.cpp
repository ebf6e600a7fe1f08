#include "kernels/cpu/matmul_transposed.hpp"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/error.hpp"
#include "kernels/cpu/intrinsics_warnings.hpp"
#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/quant_blocks.hpp"

namespace sluice::cpu {

int64_t gemm_transposed_scratch_floats(int64_t rows, int64_t cols) { return rows * cols; }

void gemm_transposed(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                     float* scratch) {
    const auto& traits = block_type(w.type);
    if (!traits.dequantize_row) fail(ErrorKind::unsupported, "no dequantiser for weight type {}", traits.name);
    // The weights dequantised once (f32 weights are used where they are), then every token's row
    // is a weighted sum of theirs, in register tiles of tokens x columns (the attention P . V
    // kernel). Accumulating one stored row at a time into every token's output instead loads and
    // stores each output per row: 25-60 GFLOP/s against ~150 a thread.
    const float* weights = scratch;
    if (w.type == DType::F32 && !w.block_scales) {
        weights = static_cast<const float*>(w.data);
    } else {
        for (int64_t r = 0; r < w.rows; ++r) {
            float* row = scratch + r * w.cols;
            traits.dequantize_row(w.row(r), row, w.cols);
            if (w.block_scales)
                for (int64_t c = 0; c < w.cols; ++c) row[c] *= w.block_scale(r, c);
        }
    }
    const auto& k = detail::path_kernels(cpu_path());
    constexpr int64_t kTokensPerCall = 1 << 20;  // weighted_sum counts its rows of weights in an int
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokensPerCall)
        k.weighted_sum(x + t0 * x_stride, x_stride, int(std::min(kTokensPerCall, n_tokens - t0)), weights, w.cols, w.rows,
                       w.cols, y + t0 * y_stride, y_stride);
}

namespace {
// Rows dequantised together, so each output row receives a 64-byte run of them at a time.
constexpr int64_t kTransposeRows = 16;

#if defined(__x86_64__)
// Q8_0 rows r0 .. r0 + 15 turned round with AVX-512: per 32-column block, the 16 rows' scales and
// 4 bytes of each row per gather, each byte widened in its lane, times its row's scale, stored as
// 16 consecutive floats of an output row. The same products as dequantize_row (float(q) * d, one
// multiply), so the same bits as the generic loop below, which took ~6x as long (scalar stores of
// 16 dequantised rows read down their columns): a V3 layer's k_b (128 x 512 x 128), 2 threads,
// 10 -> ~3 ms.
SLUICE_INTRINSICS_WARNINGS_OFF
__attribute__((target("avx512f,avx512bw,f16c"))) void transpose_q8_0_rows16(const Matrix& w, int64_t r0, float* out) {
    const int64_t row_bytes = w.bytes_per_row();
    const __m512i lanes =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(int(row_bytes)));
    const auto* first = reinterpret_cast<const uint8_t*>(w.row(r0));
    for (int64_t b = 0; b < w.cols / 32; ++b) {
        const uint8_t* block = first + b * int64_t(sizeof(quant::BlockQ8_0));
        // each lane's low 16 bits: its row's f16 d (the block starts with it)
        const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(lanes, block, 1)));
        for (int m = 0; m < 8; ++m) {
            const __m512i four = _mm512_i32gather_epi32(lanes, block + offsetof(quant::BlockQ8_0, qs) + 4 * m, 1);
            const __m512i bytes[4] = {_mm512_srai_epi32(_mm512_slli_epi32(four, 24), 24), _mm512_srai_epi32(_mm512_slli_epi32(four, 16), 24),
                                      _mm512_srai_epi32(_mm512_slli_epi32(four, 8), 24), _mm512_srai_epi32(four, 24)};
            for (int i = 0; i < 4; ++i)
                _mm512_storeu_ps(out + (32 * b + 4 * m + i) * w.rows + r0, _mm512_mul_ps(_mm512_cvtepi32_ps(bytes[i]), d));
        }
    }
}
SLUICE_INTRINSICS_WARNINGS_ON
#endif

}  // namespace

int64_t transpose_scratch_floats(int64_t cols) { return kTransposeRows * cols; }

void transpose_to_f32(const Matrix& w, float* out, float* scratch) {
    const auto& traits = block_type(w.type);
    if (!traits.dequantize_row) fail(ErrorKind::unsupported, "no dequantiser for weight type {}", traits.name);
    int64_t first_generic = 0;
#if defined(__x86_64__)
    if (w.type == DType::Q8_0 && !w.block_scales && cpu_path() == CpuPath::avx512)
        for (; first_generic + kTransposeRows <= w.rows; first_generic += kTransposeRows)
            transpose_q8_0_rows16(w, first_generic, out);
#endif
    for (int64_t r0 = first_generic; r0 < w.rows; r0 += kTransposeRows) {
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
