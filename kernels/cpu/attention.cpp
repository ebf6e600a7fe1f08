// MLA attention on the CPU: the absorbed form over the latent cache (decode and prefill), and the
// decompressed MHA form that cross-checks it. Threads split (token, head) pairs; each thread keeps
// its score rows in its own slice of the caller's scratch.
#include <algorithm>

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

int64_t attention_scratch_floats(const AttentionShape& /*shape*/, int64_t n_ctx, int n_threads) {
    return score_row_floats(n_ctx) * kHeadGroup * std::max(1, n_threads);
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
            float latent_dots[kHeadGroup], rope_dots[kHeadGroup];
            for (int64_t j = 0; j < visible; ++j) {
                k.dot_group(q_latent + first_row * kv_rank, kv_rank, n_group_heads, cache_latent + j * kv_rank,
                            kv_rank, latent_dots);
                k.dot_group(q_rope + first_row * rope_dim, rope_dim, n_group_heads, cache_rope + j * rope_dim,
                            rope_dim, rope_dots);
                for (int g = 0; g < n_group_heads; ++g)
                    scores[g * row_floats + j] = shape.scale * (latent_dots[g] + rope_dots[g]);
            }
            for (int g = 0; g < n_group_heads; ++g) k.softmax(scores + g * row_floats, visible);
            // ô_h = sum_j P_hj c_j for the whole group, the latent rows shared by every head.
            k.weighted_sum(scores, row_floats, n_group_heads, cache_latent, kv_rank, visible, kv_rank,
                           out + first_row * kv_rank, kv_rank);
        }
    });
}

void mla_attention_naive_on_path(CpuPath path, const NaiveAttentionShape& shape, int64_t n_tokens,
                                 const float* q, const float* kc, const float* v, const int64_t* n_visible,
                                 float* out, float* scratch, ThreadPool& pool) {
    const PathKernels& k = path_kernels(path);
    int64_t n_ctx = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
        if (n_visible[t] <= 0) fail(ErrorKind::internal, "attention: query token {} sees no cache rows", t);
        n_ctx = std::max(n_ctx, n_visible[t]);
    }
    const int64_t row_floats = score_row_floats(n_ctx);
    const int n_heads = shape.n_heads, qk = shape.qk_head_dim, vd = shape.v_head_dim;
    pool.parallel_for(n_tokens * n_heads, [&](int64_t begin, int64_t end, int thread) {
        float* scores = scratch + row_floats * thread;
        for (int64_t item = begin; item < end; ++item) {
            const int64_t t = item / n_heads, h = item % n_heads;
            const float* qh = q + item * qk;
            const int64_t visible = n_visible[t];
            for (int64_t j = 0; j < visible; ++j)
                scores[j] = shape.scale * k.dot(qh, kc + (j * n_heads + h) * qk, qk);
            k.softmax(scores, visible);
            float* o = out + item * vd;
            std::fill(o, o + vd, 0.0f);
            for (int64_t j = 0; j < visible; ++j) k.axpy(scores[j], v + (j * n_heads + h) * vd, o, vd);
        }
    });
}

}  // namespace detail

void mla_attention_absorbed(const AttentionShape& shape, int64_t n_tokens, const float* q_latent,
                            const float* q_rope, const float* cache_latent, const float* cache_rope,
                            const int64_t* n_visible, float* out, float* scratch, ThreadPool& pool) {
    detail::mla_attention_absorbed_on_path(cpu_path(), shape, n_tokens, q_latent, q_rope, cache_latent,
                                           cache_rope, n_visible, out, scratch, pool);
}

void mla_attention_naive(const NaiveAttentionShape& shape, int64_t n_tokens, const float* q, const float* k,
                         const float* v, const int64_t* n_visible, float* out, float* scratch, ThreadPool& pool) {
    detail::mla_attention_naive_on_path(cpu_path(), shape, n_tokens, q, k, v, n_visible, out, scratch, pool);
}

}  // namespace sluice::cpu
