// MLA attention on the CPU: the absorbed form over the latent cache (decode, short chunks after a
// long context) and the decompressed MHA form over expanded blocks of it (prefill). Threads split
// (token, head) work items; each thread keeps its score rows in its own slice of the scratch.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/cpu/ops.hpp"

namespace sluice::cpu {
namespace {

constexpr int64_t kScoreRowAlignFloats = 16;

int64_t score_row_floats(int64_t n_ctx) {
    return (n_ctx + kScoreRowAlignFloats - 1) / kScoreRowAlignFloats * kScoreRowAlignFloats;
}

}  // namespace

// Heads per work item of the absorbed form: all heads of a group score one cache row while it is
// in L1, so the latent cache is read n_heads / kHeadGroup times per token instead of n_heads.
constexpr int kHeadGroup = 8;
// Queries per work item of the decompressed form: a key row is scored against all of them while
// it is in L1.
constexpr int kQueryGroup = 8;

int64_t attention_scratch_floats(const AttentionShape& shape, int64_t n_ctx, int n_threads) {
    const int64_t f32 = score_row_floats(n_ctx) * kHeadGroup * std::max(1, n_threads);
    if (shape.math == AttentionMath::bf16 && bf16_attention_supported(shape))
        return std::max(f32, attention_bf16_scratch_floats(shape, n_ctx, n_threads));
    return f32;
}

namespace detail {

void mla_attention_absorbed_on_path(CpuPath path, const AttentionShape& shape, int64_t n_tokens,
                                    const float* q_latent, const float* q_rope, const float* cache_latent,
                                    const float* cache_rope, const int64_t* n_visible, float* out,
                                    float* scratch, ThreadPool& pool) {
    const PathKernels& k = path_kernels(path);
    int64_t n_ctx = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
        if (n_visible[t] <= 0) fail(ErrorKind::internal, "attention: query token {} sees no cache rows", t);
        n_ctx = std::max(n_ctx, n_visible[t]);
    }
    const int64_t row_floats = score_row_floats(n_ctx);
    const int kv_rank = shape.kv_rank, rope_dim = shape.rope_dim, n_heads = shape.n_heads;
    const int64_t groups_per_token = (n_heads + kHeadGroup - 1) / kHeadGroup;
    pool.parallel_for(n_tokens * groups_per_token, [&](int64_t begin, int64_t end, int thread) {
        float* scores = scratch + row_floats * kHeadGroup * thread;  // [kHeadGroup][row_floats]
        for (int64_t item = begin; item < end; ++item) {
            const int64_t t = item / groups_per_token;
            const int h_begin = int(item % groups_per_token) * kHeadGroup;
            const int n_group_heads = std::min(kHeadGroup, n_heads - h_begin);
            const int64_t first_row = t * n_heads + h_begin;  // (t, h) row of the [n_tokens, n_heads, *] tensors
            const int64_t visible = n_visible[t];
            // s = scale * (q~ . c_j + q_pe . k_pe_j): one shared 576-wide key per cache row.
            k.attention_scores(n_group_heads, q_latent + first_row * kv_rank, kv_rank, q_rope + first_row * rope_dim,
                               rope_dim, visible, cache_latent, kv_rank, kv_rank, cache_rope, rope_dim, rope_dim,
                               shape.scale, scores, row_floats);
            for (int g = 0; g < n_group_heads; ++g) k.softmax(scores + g * row_floats, visible);
            // ô_h = sum_j P_hj c_j for the whole group, the latent rows shared by every head.
            k.weighted_sum(scores, row_floats, n_group_heads, cache_latent, kv_rank, visible, kv_rank,
                           out + first_row * kv_rank, kv_rank);
        }
    });
}

void mla_attention_decompressed_block_on_path(CpuPath path, const DecompressedAttentionShape& shape,
                                              int64_t n_tokens, const float* q, const float* q_rope, const float* kv,
                                              const float* k_rope, int64_t first, int64_t n_positions,
                                              const int64_t* n_visible, float* out, float* running_max,
                                              float* running_sum, float* scratch, ThreadPool& pool) {
    const PathKernels& k = path_kernels(path);
    const int n_heads = shape.n_heads, nope = shape.nope_dim, rope = shape.rope_dim, vd = shape.v_dim;
    const int64_t kv_head = nope + vd, kv_row = int64_t(n_heads) * kv_head;
    const int64_t q_token_stride = int64_t(n_heads) * shape.q_head_stride, rope_token_stride = int64_t(n_heads) * rope;
    const int64_t row_floats = score_row_floats(n_positions);
    const int64_t token_groups = (n_tokens + kQueryGroup - 1) / kQueryGroup;
    constexpr float kMasked = -std::numeric_limits<float>::infinity();
    pool.parallel_for(int64_t(n_heads) * token_groups, [&](int64_t begin, int64_t end, int thread) {
        float* scores = scratch + (row_floats + vd) * kQueryGroup * thread;  // [kQueryGroup][row_floats]
        float* block_out = scores + row_floats * kQueryGroup;                // [kQueryGroup][vd]
        for (int64_t item = begin; item < end; ++item) {
            const int64_t h = item / token_groups;  // head-major: a thread's items share a head's block
            const int64_t t0 = item % token_groups * kQueryGroup;
            const int n_g = int(std::min<int64_t>(kQueryGroup, n_tokens - t0));
            int64_t seen = 0;  // positions of this block any query of the group sees
            for (int g = 0; g < n_g; ++g) seen = std::max(seen, std::min(n_visible[t0 + g] - first, n_positions));
            if (seen <= 0) continue;
            const float* q_nope = q + t0 * q_token_stride + h * shape.q_head_stride;
            const float* q_pe = q_rope + t0 * rope_token_stride + h * rope;
            k.attention_scores(n_g, q_nope, q_token_stride, q_pe, rope_token_stride, seen, kv + h * kv_head, kv_row, nope,
                               k_rope, rope, rope, shape.scale, scores, row_floats);
            for (int g = 0; g < n_g; ++g)  // causal: the positions past a query's own
                for (int64_t j = std::max<int64_t>(0, n_visible[t0 + g] - first); j < seen; ++j)
                    scores[g * row_floats + j] = kMasked;
            // Online softmax: rescale what earlier blocks summed to the new running max.
            float carry[kQueryGroup];
            for (int g = 0; g < n_g; ++g) {
                float* row = scores + g * row_floats;
                const int64_t stat = (t0 + g) * n_heads + h;
                const float block_max = k.max_of(row, seen);
                if (block_max == kMasked) {  // this query sees none of the block
                    std::fill(row, row + seen, 0.0f);
                    carry[g] = 1.0f;
                    continue;
                }
                const float new_max = std::max(running_max[stat], block_max);
                carry[g] = std::exp(running_max[stat] - new_max);  // 0 for the first block seen
                running_sum[stat] = running_sum[stat] * carry[g] + k.exp_sum(row, seen, new_max);
                running_max[stat] = new_max;
            }
            k.weighted_sum(scores, row_floats, n_g, kv + h * kv_head + nope, kv_row, seen, vd, block_out, vd);
            for (int g = 0; g < n_g; ++g) {
                float* o = out + ((t0 + g) * n_heads + h) * vd;
                k.scale(o, carry[g], vd);
                k.axpy(1.0f, block_out + g * vd, o, vd);
            }
        }
    });
}

}  // namespace detail

int64_t decompressed_attention_scratch_floats(const DecompressedAttentionShape& shape, int64_t n_positions,
                                              int n_threads) {
    const int64_t f32 = (score_row_floats(n_positions) + shape.v_dim) * kQueryGroup * std::max(1, n_threads);
    if (shape.math == AttentionMath::bf16 && bf16_decompressed_supported(shape))
        return std::max(f32, decompressed_bf16_scratch_floats(shape, n_positions, n_threads));
    return f32;
}

void mla_decompressed_begin(const DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                            float* running_max, float* running_sum) {
    const int64_t rows = n_tokens * shape.n_heads;
    std::fill(out, out + rows * shape.v_dim, 0.0f);
    std::fill(running_max, running_max + rows, -std::numeric_limits<float>::infinity());
    std::fill(running_sum, running_sum + rows, 0.0f);
}

void mla_attention_decompressed_block(const DecompressedAttentionShape& shape, int64_t n_tokens, const float* q,
                                      const float* q_rope, const float* kv, const float* k_rope, int64_t first,
                                      int64_t n_positions, const int64_t* n_visible, float* out, float* running_max,
                                      float* running_sum, float* scratch, ThreadPool& pool) {
    if (shape.math == AttentionMath::bf16 && bf16_decompressed_supported(shape))
        return mla_attention_decompressed_block_bf16(shape, n_tokens, q, q_rope, kv, k_rope, first, n_positions,
                                                     n_visible, out, running_max, running_sum, scratch, pool);
    detail::mla_attention_decompressed_block_on_path(cpu_path(), shape, n_tokens, q, q_rope, kv, k_rope, first,
                                                     n_positions, n_visible, out, running_max, running_sum, scratch,
                                                     pool);
}

void mla_decompressed_end(const DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                          const float* running_sum) {
    const int64_t rows = n_tokens * shape.n_heads;
    for (int64_t r = 0; r < rows; ++r) {
        if (!(running_sum[r] > 0.0f)) fail(ErrorKind::internal, "attention: query row {} saw no position", r);
        const float inv = 1.0f / running_sum[r];
        for (int64_t i = 0; i < shape.v_dim; ++i) out[r * shape.v_dim + i] *= inv;
    }
}

void mla_attention_absorbed(const AttentionShape& shape, int64_t n_tokens, const float* q_latent,
                            const float* q_rope, const float* cache_latent, const float* cache_rope,
                            const int64_t* n_visible, float* out, float* scratch, ThreadPool& pool) {
    if (shape.math == AttentionMath::bf16 && bf16_attention_supported(shape))
        return mla_attention_absorbed_bf16(shape, n_tokens, q_latent, q_rope, cache_latent, cache_rope, n_visible, out,
                                           scratch, pool);
    detail::mla_attention_absorbed_on_path(cpu_path(), shape, n_tokens, q_latent, q_rope, cache_latent,
                                           cache_rope, n_visible, out, scratch, pool);
}

}  // namespace sluice::cpu
