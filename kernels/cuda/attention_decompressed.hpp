// The decompressed (MHA) form of MLA on the device (spec §2.7), the same contract as
// cpu::mla_attention_decompressed_block and its begin / end: the latent cache is expanded a block
// of positions at a time into per-head keys and values kv [m, heads, nope + v] (by the caller,
// with GEMMs), and each block is folded into out [tokens, heads, v] with a running max and sum
// per (token, head), so only one block is ever held expanded. All pointers are device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/ops.hpp"

namespace sluice::cuda {

void mla_decompressed_begin(const cpu::DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                            float* running_max, float* running_sum, cudaStream_t stream);

// Positions [first, first + n_positions) of kv / k_rope; query t sees positions [0, n_visible[t]).
void mla_attention_decompressed_block(const cpu::DecompressedAttentionShape& shape, int64_t n_tokens, const float* q,
                                      const float* q_rope, const float* kv, const float* k_rope, int64_t first,
                                      int64_t n_positions, const int64_t* n_visible, float* out, float* running_max,
                                      float* running_sum, cudaStream_t stream);

void mla_decompressed_end(const cpu::DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                          const float* running_sum, cudaStream_t stream);

}  // namespace sluice::cuda
