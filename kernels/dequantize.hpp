// Scalar reference dequantisers, one per block type: the ground truth that the vectorised
// kernels and the gguf-py fixtures are checked against.
#pragma once

#include <cstdint>

namespace sluice {

void dequantize_row_f32(const void* src, float* out, int64_t n);
void dequantize_row_f16(const void* src, float* out, int64_t n);
void dequantize_row_bf16(const void* src, float* out, int64_t n);
// FP8 e4m3fn values, unscaled (see BlockTypeTraits for FP8_E4M3_B128).
void dequantize_row_fp8_e4m3(const void* src, float* out, int64_t n);
float fp8_e4m3_to_f32(uint8_t byte);

// ggml quantised blocks (kernels/dequantize_quant.cpp); n is a multiple of the block size.
void dequantize_row_q4_0(const void* src, float* out, int64_t n);
void dequantize_row_q4_1(const void* src, float* out, int64_t n);
void dequantize_row_q5_0(const void* src, float* out, int64_t n);
void dequantize_row_q5_1(const void* src, float* out, int64_t n);
void dequantize_row_q8_0(const void* src, float* out, int64_t n);
void dequantize_row_q2_k(const void* src, float* out, int64_t n);
void dequantize_row_q3_k(const void* src, float* out, int64_t n);
void dequantize_row_q4_k(const void* src, float* out, int64_t n);
void dequantize_row_q5_k(const void* src, float* out, int64_t n);
void dequantize_row_q6_k(const void* src, float* out, int64_t n);
void dequantize_row_iq4_nl(const void* src, float* out, int64_t n);
void dequantize_row_iq4_xs(const void* src, float* out, int64_t n);

}  // namespace sluice
