// The per-instruction-set kernel tables (scalar, AVX2, AVX-512) behind gemv/gemm and the
// vectorised ops. The public entry points pick one by cpu_path(); tests call each path directly.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/matrix.hpp"

namespace sluice::cpu::detail {

// Y[t][r] = W[r] . X[t] for rows [row_begin, row_end) of w and tokens [0, n_tokens); y points at
// row 0 of token 0. row_scratch holds w.cols floats (used by the dequantising kernels only).
using RowsKernel = void (*)(const Matrix& w, int64_t row_begin, int64_t row_end, const float* x,
                            int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                            float* row_scratch);

struct PathKernels {
    CpuPath path;
    RowsKernel gemm_f32;
    RowsKernel gemm_f16;
    RowsKernel gemm_bf16;
    // Any type with a dequantize_row (FP8_E4M3_B128 with its 128x128 scales): dequantise one row
    // into row_scratch, then the f32 kernel over all tokens.
    RowsKernel gemm_dequantized;
    // Fused FP8_E4M3_B128 (weights widened in registers, block scale per 128 columns).
    RowsKernel gemm_fp8_b128;
    float (*dot)(const float* a, const float* b, int64_t n);
    // scores[g * score_stride + j] = scale * (q_g . key_j + q_rope_g . key_rope_j) for g < n_q,
    // j < n_keys (key_width and rope_width floats of each; strides in floats): attention's scores.
    void (*attention_scores)(int n_q, const float* q, int64_t q_stride, const float* q_rope, int64_t q_rope_stride,
                             int64_t n_keys, const float* key, int64_t key_stride, int64_t key_width,
                             const float* key_rope, int64_t key_rope_stride, int64_t rope_width, float scale,
                             float* scores, int64_t score_stride);
    // out[g][:n_cols] = sum_j p[g][j] * rows[j][:n_cols] for g < n_p (strides in floats).
    void (*weighted_sum)(const float* p, int64_t p_stride, int n_p, const float* rows, int64_t row_stride,
                         int64_t n_rows, int64_t n_cols, float* out, int64_t out_stride);
    void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a * x
    void (*scale)(float* y, float a, int64_t n);                  // y *= a
    void (*rms_norm)(const float* x, const float* w, float eps, int64_t n, float* out);
    void (*silu_mul)(const float* gate, const float* up, int64_t n, float* out);
    void (*softmax)(float* x, int64_t n);
    // x[i] = exp(x[i] - shift) (-inf gives 0); returns their sum.
    float (*exp_sum)(float* x, int64_t n, float shift);
    float (*max_of)(const float* x, int64_t n);  // -inf for n = 0
};

const PathKernels& scalar_kernels();
const PathKernels& avx2_kernels();
const PathKernels& avx512_kernels();
const PathKernels& path_kernels(CpuPath path);

// The paths this CPU can run (scalar always), for tests and benches.
std::vector<CpuPath> supported_paths();
const char* path_name(CpuPath path);

// The matmul kernel for a weight type on a path, or null (no kernel: has_matmul_kernel false).
RowsKernel matmul_kernel(DType type, const PathKernels& kernels);

// gemm / absorbed attention on an explicit path (the public functions pass cpu_path()).
void gemm_on_path(CpuPath path, const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens,
                  float* y, int64_t y_stride, ThreadPool& pool);
void mla_attention_absorbed_on_path(CpuPath path, const AttentionShape& shape, int64_t n_tokens,
                                    const float* q_latent, const float* q_rope, const float* cache_latent,
                                    const float* cache_rope, const int64_t* n_visible, float* out,
                                    float* scratch, ThreadPool& pool);
void mla_attention_decompressed_block_on_path(CpuPath path, const DecompressedAttentionShape& shape,
                                              int64_t n_tokens, const float* q, const float* q_rope, const float* kv,
                                              const float* k_rope, int64_t first, int64_t n_positions,
                                              const int64_t* n_visible, float* out, float* running_max,
                                              float* running_sum, float* scratch, ThreadPool& pool);

}  // namespace sluice::cpu::detail
