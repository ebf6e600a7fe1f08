// CPU element-wise and small ops of the DeepSeek-V3 forward pass (spec §2): RMSNorm, YaRN RoPE,
// SiLU gate, softmax, the MoE router, MLA attention. All f32, fp32 accumulation.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/thread_pool.hpp"

namespace sluice::cpu {

// out[i] = w[i] * x[i] / sqrt(mean(x^2) + eps). out may alias x.
void rms_norm(const float* x, const float* w, float eps, int64_t n, float* out);

// YaRN frequencies for one rotary dim (spec §2.5). inv_freq has dim/2 entries.
struct RopeYarn {
    int dim = 64;
    float theta = 10000.0f;
    float factor = 1.0f;            // <= 1 means no YaRN scaling
    int original_context = 4096;
    float beta_fast = 32.0f;
    float beta_slow = 1.0f;
    float mscale = 1.0f;
    float mscale_all_dim = 1.0f;
};
// Per-pair frequencies f_i, blended as in spec §2.5 steps 1-4 (computed in double, stored f32).
std::vector<float> yarn_frequencies(const RopeYarn& rope);
// cos/sin magnitude (spec §2.5 step 5): mscale(factor, mscale) / mscale(factor, mscale_all_dim).
float yarn_attention_factor(const RopeYarn& rope);
// Softmax scale (spec §2.6): qk_head_dim^-1/2 * m^2, m = 0.1*mscale_all_dim*ln(factor)+1 (factor>1).
float yarn_softmax_scale(const RopeYarn& rope, int qk_head_dim);

// Rotates adjacent pairs (x[2i], x[2i+1]) of x[0..dim) by angle pos*freq[i], magnitude `magnitude`.
// Angles are computed in fp32 as in the official implementation... (pos * f_i in float).
void rope_interleaved(float* x, int dim, int64_t pos, const float* freq, float magnitude);

// out[i] = silu(gate[i]) * up[i]. out may alias gate.
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// In-place softmax over x[0..n) (max-subtracted, fp32).
void softmax(float* x, int64_t n);

// The MoE router (spec §2.10). `logits` [n_experts] are the router GEMV output.
struct RouterConfig {
    int n_experts = 256;
    int top_k = 8;
    int n_group = 8;
    int topk_group = 4;
    enum class Scoring { sigmoid, softmax } scoring = Scoring::sigmoid;
    // noaux_tc (sum of top-2 biased scores per group, V3) or group max (V2 group_limited_greedy);
    // with n_group == 1 grouping is a no-op.
    enum class GroupScore { top2_sum, max } group_score = GroupScore::top2_sum;
    bool norm_topk_prob = true;
    float routed_scaling_factor = 2.5f;
};
// Selects top_k experts: ids into expert_ids[top_k] (sorted by descending selection score,
// ties to the lower index), weights into expert_weights[top_k]. `bias` may be null.
void route(const float* logits, const float* bias, const RouterConfig& config,
           int* expert_ids, float* expert_weights);

// Absorbed MLA attention for a group of query tokens against the latent cache (spec §2.8).
//   q_latent: [n_tokens, n_heads, kv_rank]  (q~ = W_UK^T q_nope, per head)
//   q_rope:   [n_tokens, n_heads, rope_dim] (already rotated)
//   cache_latent: [n_ctx, kv_rank], cache_rope: [n_ctx, rope_dim] (row stride = that width)
//   query token t sees cache rows [0, n_visible[t]) (causal: position + 1)
//   out: [n_tokens, n_heads, kv_rank] = sum_t P * c_t
// scratch is sized by attention_scratch_floats(shape, n_ctx >= max n_visible, pool.size()); no
// allocation happens inside. Work is split over (token, group of 8 heads) items.
// The products in f32 (the default: logits within 2e-5 of transformers') or in bf16
// (attention_bf16.cpp: ~2x the rate where the CPU has AVX-512 BF16, the query, the cache and the
// probabilities rounded to 8 significant bits), per shape: the scratch is sized for its math, and a
// shape asking bf16 where bf16_attention_supported is false runs f32.
enum class AttentionMath { f32, bf16 };
struct AttentionShape {
    int n_heads = 0;
    int kv_rank = 512;
    int rope_dim = 64;
    float scale = 1.0f;
    AttentionMath math = AttentionMath::f32;
};
int64_t attention_scratch_floats(const AttentionShape& shape, int64_t n_ctx, int n_threads);
void mla_attention_absorbed(const AttentionShape& shape, int64_t n_tokens, const float* q_latent,
                            const float* q_rope, const float* cache_latent, const float* cache_rope,
                            const int64_t* n_visible, float* out, float* scratch, ThreadPool& pool);

// The process's choice (--attention-precision), which a backend copies into its AttentionShape when
// it sizes its scratch; the kernels read only the shape's.
void set_attention_math(AttentionMath math);
AttentionMath attention_math();
bool cpu_has_bf16_attention();  // the AVX-512 path with AVX-512 BF16
bool bf16_attention_supported(const AttentionShape& shape);  // that, and a shape its layouts take
int64_t attention_bf16_scratch_floats(const AttentionShape& shape, int64_t n_ctx, int n_threads);
void mla_attention_absorbed_bf16(const AttentionShape& shape, int64_t n_tokens, const float* q_latent,
                                 const float* q_rope, const float* cache_latent, const float* cache_rope,
                                 const int64_t* n_visible, float* out, float* scratch, ThreadPool& pool);

// The decompressed (MHA) form of the same attention (spec §2.7), cheaper than the absorbed form
// when many queries share the positions (a prefill): the latents are expanded block by block into
// per-head keys and values, kv = [k_nope | v] = kv_b . c, each block scored against every query and
// folded into the output with a running max and sum (online softmax), so only one block of
// positions is ever held expanded.
//   q:      [n_tokens, n_heads, q_head_stride]; the first nope_dim floats of a head are q_nope
//   q_rope: [n_tokens, n_heads, rope_dim] (rotated)
//   kv:     [n_positions, n_heads, nope_dim + v_dim] for positions [first, first + n_positions)
//   k_rope: [n_positions, rope_dim] (rotated), the key's shared rope part, same positions
//   out:    [n_tokens, n_heads, v_dim]; running_max, running_sum: [n_tokens, n_heads]
// Query token t sees positions [0, n_visible[t]). Begin, feed blocks in ascending position order
// starting at 0, end. scratch: decompressed_attention_scratch_floats(shape, n_positions, pool.size()).
// Work is split over (head, group of 8 query tokens) items, so a head's block stays in L2.
// The products in f32 or, where bf16_decompressed_supported, in bf16 (attention_bf16.cpp: query,
// keys, probabilities and values rounded to bf16, as the absorbed form's bf16 math does; work split
// over heads, each head's block turned into bf16 once for all its query groups).
struct DecompressedAttentionShape {
    int n_heads = 0;
    int nope_dim = 128;
    int rope_dim = 64;
    int v_dim = 128;
    int q_head_stride = 192;
    float scale = 1.0f;
    AttentionMath math = AttentionMath::f32;
};
bool bf16_decompressed_supported(const DecompressedAttentionShape& shape);
int64_t decompressed_bf16_scratch_floats(const DecompressedAttentionShape& shape, int64_t n_positions, int n_threads);
void mla_attention_decompressed_block_bf16(const DecompressedAttentionShape& shape, int64_t n_tokens, const float* q,
                                           const float* q_rope, const float* kv, const float* k_rope, int64_t first,
                                           int64_t n_positions, const int64_t* n_visible, float* out,
                                           float* running_max, float* running_sum, float* scratch, ThreadPool& pool);
int64_t decompressed_attention_scratch_floats(const DecompressedAttentionShape& shape, int64_t n_positions,
                                              int n_threads);
void mla_decompressed_begin(const DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                            float* running_max, float* running_sum);
void mla_attention_decompressed_block(const DecompressedAttentionShape& shape, int64_t n_tokens, const float* q,
                                      const float* q_rope, const float* kv, const float* k_rope, int64_t first,
                                      int64_t n_positions, const int64_t* n_visible, float* out, float* running_max,
                                      float* running_sum, float* scratch, ThreadPool& pool);
void mla_decompressed_end(const DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                          const float* running_sum);

}  // namespace sluice::cpu
