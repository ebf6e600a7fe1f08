// Fused dots of quantised weight rows (as stored) with activations quantised once per call to
// Q8_0-style blocks: int8 products summed in int32 per block, then scaled. Q8_0, Q4_0, Q4_K, Q5_K and Q6_K
// weights so far (K-quant sub-blocks of 32 line up with the activation blocks); paths: scalar, AVX2 (maddubs) and AVX-512 VNNI (vpdpbusd), picked at run time.
#pragma once

#include <cstdint>

#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/matrix.hpp"

namespace sluice::cpu {

enum class QuantDotPath { scalar, avx2, avx512_vnni };

bool quant_dot_supports(DType type);
bool quant_dot_path_available(QuantDotPath path);
QuantDotPath best_quant_dot_path();

// y[t * y_stride + r] = dot(w row r, x[t * x_stride ...]) for t < n_tokens. w.cols must be whole
// blocks of w.type and w.type supported. Activations are quantised into a per-thread scratch that
// only grows (no allocation per call after warm-up); each weight block is reused for up to 4 tokens.
void quant_gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
                int64_t y_stride, ThreadPool& pool);
void quant_gemm_on_path(QuantDotPath path, const Matrix& w, const float* x, int64_t x_stride,
                        int64_t n_tokens, float* y, int64_t y_stride, ThreadPool& pool);

}  // namespace sluice::cpu
