// CPU matrix products over weights as stored (any DType in the block table that has a kernel):
// decode GEMV and prefill GEMM, both multithreaded on the pool, activations in f32.
#pragma once

#include <cstdint>

#include "core/thread_pool.hpp"
#include "kernels/matrix.hpp"

namespace sluice::cpu {

// y[r] = sum_c W[r][c] * x[c] for r in [0, W.rows). x: [W.cols], y: [W.rows]. fp32 accumulation.
void gemv(const Matrix& w, const float* x, float* y, ThreadPool& pool);

// Y[t][r] = sum_c W[r][c] * X[t][c]. X: [n_tokens, W.cols] row-major (row stride x_stride floats),
// Y: [n_tokens, W.rows] (row stride y_stride floats). n_tokens == 1 is a GEMV.
void gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens,
          float* y, int64_t y_stride, ThreadPool& pool);

// gemm for each group of rows (see RowGroups): y[t][g y_offset + r] = dot(W row g rows + r, x[t][g x_offset ..])
// for r < groups.rows, g < W.rows / groups.rows; W.cols columns each. groups.rows must divide W.rows.
// Each token's numbers are those of per-group gemm calls.
void gemm_grouped(const Matrix& w, const RowGroups& groups, const float* x, int64_t x_stride, int64_t n_tokens,
                  float* y, int64_t y_stride, ThreadPool& pool);

// Scratch the matmul kernels keep per thread, grown to the largest call and never shrunk:
// quantised activations on the calling thread (quant_gemm), one dequantised row on each pool
// thread (weights without a fused kernel). reserve_gemm_scratch grows it now for calls of up to
// n_tokens x cols (a forward does before its first step, so its steps allocate nothing);
// gemm_scratch_bytes is what that holds, for the memory planner.
void reserve_gemm_scratch(int64_t n_tokens, int64_t cols, ThreadPool& pool);
uint64_t gemm_scratch_bytes(int64_t n_tokens, int64_t cols, int n_threads);

// Whether gemv/gemm have a kernel for this type (the planner refuses a model otherwise).
bool has_matmul_kernel(DType type);

// How gemv/gemm treat quantised weights that have a fused kernel (Q8_0, Q4_0, Q2_K..Q6_K):
//  fused: activations quantised to 8 bits on the fly (per 32; per 256 for K-quants), integer dot
//         products (VNNI / AVX2),
//         as llama.cpp does — the fast default;
//  exact: each weight row dequantised to f32 and dotted with f32 activations — what the oracle
//         tests compare bit-close with transformers on the dequantised weights.
// The process starts in `exact` when SLUICE_EXACT_DOT=1 is in the environment.
enum class QuantDot { fused, exact };
void set_quant_dot(QuantDot mode);
QuantDot quant_dot();

}  // namespace sluice::cpu
