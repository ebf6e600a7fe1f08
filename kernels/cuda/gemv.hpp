// Decode GEMV on the device over weights as stored: y = W x for a Matrix whose `data` (and FP8
// `block_scales`) point to device memory. One warp per row, four rows per block, fp32
// accumulation; F32/F16/BF16/FP8 rows are read in 128-bit loads interleaved across the warp,
// block-quantised rows (every block type the CPU reads: Q4_0/1, Q5_0/1, Q8_0, Q2_K..Q6_K, IQ4_NL,
// IQ4_XS) one 32-weight group per lane through the decoders of quant_codecs.cuh.
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

// Whether gemv has a device kernel for the type.
bool has_gemv_kernel(DType type);

}  // namespace sluice::cuda
