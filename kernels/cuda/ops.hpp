// Device element-wise and small ops of the DeepSeek-V3 forward pass, mirroring kernels/cpu/ops.hpp
// over batches of rows (tokens). All pointers are device memory, all f32; every call is
// asynchronous on `stream`. Frequencies and configs are the CPU ones (yarn_frequencies etc.).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/ops.hpp"

namespace sluice::cuda {

// out[t][i] = w[i] * x[t][i] / sqrt(mean(x[t]^2) + eps) for n_rows rows of n (row strides
// x_stride and out_stride). out may alias x.
void rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t n_rows, int64_t n, float* out,
              int64_t out_stride, cudaStream_t stream);

// x[i] += y[i] for i < n.
void add_inplace(float* x, const float* y, int64_t n, cudaStream_t stream);

// out[r] = rows[index[r]] for r < n_rows (rows of `width` floats, packed).
void gather_rows(const float* rows, const int32_t* index, int64_t n_rows, int64_t width, float* out,
                 cudaStream_t stream);

// The MoE combine in a fixed order: out[t] = sum_{j < per_token} weight[slot] * expert_out[slot],
// slot = token_slots[t * per_token + j], summed in j order (ascending slots: the CPU's order).
void combine_slots(const float* expert_out, const int32_t* token_slots, const float* slot_weight, int64_t n_tokens,
                   int per_token, int64_t width, float* out, cudaStream_t stream);

// Rotates adjacent pairs of the first `dim` floats of each of n_heads vectors per token:
// vector (t, h) starts at x + t * token_stride + h * head_stride; token t is at positions[t]
// (device int64). freq: device [dim/2] from cpu::yarn_frequencies.
void rope_interleaved(float* x, int64_t n_tokens, int n_heads, int64_t token_stride, int64_t head_stride, int dim,
                      const int64_t* positions, const float* freq, float magnitude, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i] for i < n. out may alias gate.
void silu_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);

// In-place softmax of n_rows rows of n (row stride `stride`).
void softmax(float* x, int64_t n_rows, int64_t n, int64_t stride, cudaStream_t stream);

// The MoE router for n_tokens tokens: logits [n_tokens, n_experts], bias [n_experts] or null;
// expert_ids / expert_weights [n_tokens, top_k]. Same selection and tie rule as cpu::route.
// Throws sluice::Error (invalid_input) on an inconsistent config, before launching.
void route(const float* logits, const float* bias, const cpu::RouterConfig& config, int64_t n_tokens,
           int* expert_ids, float* expert_weights, cudaStream_t stream);

}  // namespace sluice::cuda
