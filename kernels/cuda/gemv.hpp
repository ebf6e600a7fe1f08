// Decode GEMV on the device over weights as stored: y = W x for a Matrix whose `data` (and FP8
// `block_scales`) point to device memory. One warp per row, four rows per block. Two paths for
// block-quantised weights, chosen as the CPU backend chooses (cpu::quant_dot(), SLUICE_EXACT_DOT):
//  fused (default, Q8_0 / Q4_0 / Q2_K..Q6_K, the types the CPU fuses): activations quantised to
//    int8 on the device as the CPU quantises them, integer dots (dp4a), gemv_q8.cu;
//  exact (and every other type): each 32-weight group decoded to the CPU dequantiser's floats
//    (quant_codecs.cuh) and dotted with the f32 activations, fp32 accumulation.
// F32/F16/BF16/FP8 rows are read in 128-bit loads interleaved across the warp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/matrix.hpp"

namespace sluice::cuda {

// x: [w.cols] f32 on the device, y: [w.rows] f32 on the device. Asynchronous on `stream`.
void gemv(const Matrix& w, const float* x, float* y, cudaStream_t stream);

// Y[t][r] = sum_c W[r][c] X[t][c] for t < n_tokens, by n_tokens GEMV launches' worth of work in
// one launch (each warp keeps its row's weights in flight once per token). The small-batch path:
// batched decode of a few sequences. X row stride x_stride, Y row stride y_stride (floats).
void gemv_batched(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
                  int64_t y_stride, cudaStream_t stream);

// Whether gemv has a device kernel for the type: every type the CPU backend multiplies.
bool has_gemv_kernel(DType type);

// The fused path on its own, whatever the mode (tests, benchmarks): the types of
// has_q8_gemv_kernel, x rows 16-byte aligned. Its quantised activations live in a scratch buffer
// per stream that grows to the largest call (the first such call allocates).
bool has_q8_gemv_kernel(DType type);
void gemv_batched_q8(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                     cudaStream_t stream);

// The activation quantisers of the fused path, byte for byte the CPU's (kernels/cpu/
// quantize_activations.hpp): n_tokens rows of `cols` floats (row stride x_stride) to
// n_tokens * ceil(cols / 256) cpu::ActivationGroupQ8 (cols a multiple of 32) or
// cpu::ActivationBlockQ8K (cols a multiple of 256) at `out` (device), token after token.
void quantize_activations_q8(const float* x, int64_t x_stride, int64_t n_tokens, int64_t cols, void* out,
                             cudaStream_t stream);
void quantize_activations_q8k(const float* x, int64_t x_stride, int64_t n_tokens, int64_t cols, void* out,
                              cudaStream_t stream);

}  // namespace sluice::cuda
