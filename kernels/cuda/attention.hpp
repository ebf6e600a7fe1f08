// Absorbed MLA attention on the device over a device latent cache (spec §2.8), the same contract
// as cpu::mla_attention_absorbed:
//   q_latent [n_tokens, n_heads, kv_rank], q_rope [n_tokens, n_heads, rope_dim],
//   cache_latent [n_ctx, kv_rank], cache_rope [n_ctx, rope_dim], n_visible [n_tokens] (device int64),
//   out [n_tokens, n_heads, kv_rank]; s_j = scale * (q~ . c_j + q_pe . k_pe_j), softmax, out = sum p_j c_j.
// One block per (token, group of kHeadsPerBlock heads): each cache row is loaded once for the group.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/ops.hpp"

namespace sluice::cuda {

// Floats of device scratch (the scores) for n_tokens queries over up to n_ctx rows.
int64_t attention_scratch_floats(const cpu::AttentionShape& shape, int64_t n_tokens, int64_t n_ctx);

void mla_attention_absorbed(const cpu::AttentionShape& shape, int64_t n_tokens, const float* q_latent,
                            const float* q_rope, const float* cache_latent, const float* cache_rope,
                            const int64_t* n_visible, int64_t n_ctx, float* out, float* scratch, cudaStream_t stream);

}  // namespace sluice::cuda
