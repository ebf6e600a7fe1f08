// MLA attention with bf16 products (AVX-512 BF16), for --attention-precision bf16: the absorbed form
// (decode) and the decompressed form's block products (prompts).
//
// The f32 form (attention.cpp) runs at ~70% of the f32 FMA peak, and its products are most of a
// long-context decode step's attention: on Zen 4, 490 sequences x 420 positions ran 120-150
// GFLOP/s on 2 threads against the 600 the quantised GEMMs reach. vdpbf16ps does two multiply-adds
// per f32 lane, so here each call turns the sequence's visible cache into bf16 once (1/128 of the
// products' work: the 128 heads share it) in the layouts the two products want, and both run
// without horizontal sums:
//   scores  s[h][p] = sum_w qw[h][w] . K[w][p]: a vector holds 16 positions; w is a pair of
//           latent (then rope) dimensions, broadcast from the head's query;
//   output  o[h][c] = sum_i Pw[h][i] . V[i][c]: a vector holds 16 channels; i is a pair of
//           positions, broadcast from the head's probabilities.
// Softmax stays in f32. The roundings are the query, the cache and the probabilities to bf16
// (8 significant bits, relative 2^-9 each); sums are f32. A token's result depends only on its own
// sequence's cache and query, never on the other tokens of the call or the batch.
//
// The decompressed (prompt) form's block products the same way, a head at a time: its block of
// expanded keys [k_nope | k_rope] and values turned into the two layouts once (1/8 of the work of
// a group of 8 queries), then scores and weighted sums of 8 queries a tile, the online softmax in
// f32 between them (attention.cpp's f32 form ran ~5% of a prefill step of the batch job).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/cpu/ops.hpp"

namespace sluice::cpu {
namespace {

std::atomic<AttentionMath> g_attention_math{AttentionMath::f32};

constexpr int kTile = 32;       // positions a scores tile holds (two vectors)
constexpr int kHeads = 8;       // heads a work item scores and sums together
constexpr int kQueries = kHeads;  // the decompressed form's queries a work item scores together (pair_tile's rows)
constexpr int kChannels = 32;   // output channels a weighted-sum tile holds (two vectors)
static_assert(kTile == 32 && kChannels == 32, "both products' tiles are two 16-lane vectors (pair_tile)");

int64_t padded_positions(int64_t n_ctx) { return (n_ctx + kTile - 1) / kTile * kTile; }
int64_t key_words(const AttentionShape& s) { return (s.kv_rank + s.rope_dim) / 2; }

// Words (4 bytes) of the shared layouts and of one thread's part.
struct Bf16Scratch {
    int64_t keys, values, per_thread;
};
Bf16Scratch bf16_scratch_words(const AttentionShape& s, int64_t n_ctx) {
    const int64_t p = padded_positions(std::max<int64_t>(n_ctx, 1));
    return {key_words(s) * p, int64_t(s.kv_rank) * p / 2, kHeads * p + kHeads * p / 2 + kHeads * key_words(s)};
}

}  // namespace

bool cpu_has_bf16_attention() { return cpu_path() == CpuPath::avx512 && detect_cpu_features().avx512bf16; }

bool bf16_attention_supported(const AttentionShape& s) {
    return cpu_has_bf16_attention() && s.kv_rank % kChannels == 0 && s.rope_dim % 32 == 0;
}

void set_attention_math(AttentionMath math) { g_attention_math.store(math); }
AttentionMath attention_math() { return g_attention_math.load(); }

int64_t attention_bf16_scratch_floats(const AttentionShape& shape, int64_t n_ctx, int n_threads) {
    const Bf16Scratch w = bf16_scratch_words(shape, n_ctx);
    return w.keys + w.values + w.per_thread * std::max(1, n_threads) + 16;  // + 16: aligned to 64 bytes inside
}

namespace {
// Words (4 bytes) of one thread's part in the decompressed form: a head's block in both layouts,
// 8 queries' words, their scores (floats) and probabilities; each part a multiple of 16 words.
struct DecompressedBf16Words {
    int64_t padded, key_words, keys, values, query, scores, probs, per_thread;
};
DecompressedBf16Words decompressed_bf16_words(const DecompressedAttentionShape& s, int64_t n_positions) {
    DecompressedBf16Words w{};
    w.padded = padded_positions(std::max<int64_t>(n_positions, 1));
    w.key_words = (s.nope_dim + s.rope_dim) / 2;
    w.keys = w.key_words * w.padded;
    w.values = int64_t(s.v_dim) * w.padded / 2;
    w.query = (kQueries * w.key_words + 15) / 16 * 16;
    w.scores = kQueries * w.padded;
    w.probs = kQueries * w.padded / 2;
    w.per_thread = w.keys + w.values + w.query + w.scores + w.probs;
    return w;
}
}  // namespace

bool bf16_decompressed_supported(const DecompressedAttentionShape& s) {
    return cpu_has_bf16_attention() && s.nope_dim % 32 == 0 && s.rope_dim % 32 == 0 && s.v_dim % kChannels == 0;
}

int64_t decompressed_bf16_scratch_floats(const DecompressedAttentionShape& shape, int64_t n_positions, int n_threads) {
    return decompressed_bf16_words(shape, n_positions).per_thread * std::max(1, n_threads) + 16;
}

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma"))), apply_to = function)
#else
#pragma GCC push_options
// GCC 12 reports its own _mm512_undefined_* temporaries inside the intrinsics headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")
#endif

}  // namespace sluice::cpu
// After the target pragma, whose target their functions take.
#include "kernels/cpu/bf16_pairs_avx512.hpp"
#include "kernels/cpu/transpose_16x16_avx512.hpp"
namespace sluice::cpu {

namespace {

struct Layouts {
    const AttentionShape& shape;
    int64_t n_ctx, padded, words;
    const float* latent;
    const float* rope;
    uint32_t* keys;    // [padded / kTile][words][kTile]: word w of positions tile..tile + 31
    uint32_t* values;  // [kv_rank / kChannels][padded / 2][kChannels]: (c of position 2i, of 2i + 1)
};

// Positions [32 tile, 32 tile + 32) into both layouts; positions past n_ctx as zeros.
void convert_tile(const Layouts& l, int64_t tile) {
    const int kv_rank = l.shape.kv_rank, rope_dim = l.shape.rope_dim;
    for (int half = 0; half < 2; ++half) {
        const int64_t p0 = tile * kTile + 16 * half;
        for (int64_t block = 0; block < l.words / 16; ++block) {  // words 16 block .. + 15 = floats 32 block ..
            __m512i r[16];
            for (int i = 0; i < 16; ++i) {
                const int64_t p = p0 + i;
                if (p >= l.n_ctx) {
                    r[i] = _mm512_setzero_si512();
                    continue;
                }
                const int64_t f = 32 * block;
                r[i] = pair_words(f < kv_rank ? l.latent + p * kv_rank + f : l.rope + p * rope_dim + (f - kv_rank));
            }
            transpose_16x16_words(r);
            uint32_t* dst = l.keys + (tile * l.words + 16 * block) * kTile + 16 * half;
            for (int c = 0; c < 16; ++c) _mm512_store_si512(dst + c * kTile, r[c]);
        }
    }
    const int64_t pairs = l.padded / 2;
    for (int64_t i = tile * kTile / 2; i < (tile + 1) * kTile / 2; ++i) {
        const int64_t p = 2 * i;
        for (int c = 0; c < kv_rank; c += 16) {
            const float* a = l.latent + p * kv_rank + c;
            const __m512i w = p + 1 < l.n_ctx ? pair_lanes(a, a + kv_rank)
                              : p < l.n_ctx   ? bf16_lanes(a)
                                              : _mm512_setzero_si512();
            _mm512_store_si512(l.values + ((c / kChannels) * pairs + i) * kChannels + c % kChannels, w);
        }
    }
}

// The register tile both products share: acc[g][v] += sum_{s < steps} bcast[g * bcast_stride + s] .
// vecs[32 s + 16 v ..] for 8 heads g and two 16-lane vectors v, each step a bf16 pair per lane.
inline void pair_tile(const uint32_t* bcast, int64_t bcast_stride, const uint32_t* vecs, int64_t steps,
                      __m512 acc[kHeads][2]) {
    for (int g = 0; g < kHeads; ++g) acc[g][0] = acc[g][1] = _mm512_setzero_ps();
    for (int64_t step = 0; step < steps; ++step) {
        const __m512bh v0 = as_bf16(_mm512_load_si512(vecs + step * 32)), v1 = as_bf16(_mm512_load_si512(vecs + step * 32 + 16));
        for (int g = 0; g < kHeads; ++g) {
            const __m512bh b = as_bf16(_mm512_set1_epi32(int(bcast[g * bcast_stride + step])));
            acc[g][0] = _mm512_dpbf16_ps(acc[g][0], b, v0);
            acc[g][1] = _mm512_dpbf16_ps(acc[g][1], b, v1);
        }
    }
}

// One token's heads [h0, h0 + n_g) against the first `visible` positions.
void attend_heads(const Layouts& l, const float* q_latent, const float* q_rope, int n_g, int64_t visible,
                  float* out, uint32_t* thread_scratch) {
    const AttentionShape& s = l.shape;
    const int64_t padded = l.padded, words = l.words, pairs = padded / 2;
    float* scores = reinterpret_cast<float*>(thread_scratch);   // [kHeads][padded]
    uint32_t* probs = thread_scratch + kHeads * padded;        // [kHeads][pairs]
    uint32_t* query = probs + kHeads * pairs;                   // [kHeads][words]
    for (int g = 0; g < kHeads; ++g)
        for (int64_t b = 0; b < words / 16; ++b) {
            const int64_t f = 32 * b;
            const __m512i w = g >= n_g ? _mm512_setzero_si512()
                              : pair_words(f < s.kv_rank ? q_latent + int64_t(g) * s.kv_rank + f
                                                         : q_rope + int64_t(g) * s.rope_dim + (f - s.kv_rank));
            _mm512_storeu_si512(query + g * words + 16 * b, w);
        }

    const int64_t tiles = (visible + kTile - 1) / kTile;
    const __m512 scale = _mm512_set1_ps(s.scale);
    for (int64_t tile = 0; tile < tiles; ++tile) {
        __m512 acc[kHeads][2];
        pair_tile(query, words, l.keys + tile * words * kTile, words, acc);
        for (int g = 0; g < kHeads; ++g) {
            _mm512_store_ps(scores + g * padded + tile * kTile, _mm512_mul_ps(acc[g][0], scale));
            _mm512_store_ps(scores + g * padded + tile * kTile + 16, _mm512_mul_ps(acc[g][1], scale));
        }
    }
    // Softmax over the visible positions, then the probabilities as pairs (the tile's rest as 0).
    const detail::PathKernels& f32 = detail::path_kernels(CpuPath::avx512);
    const int64_t used = tiles * kTile, used_pairs = (visible + 1) / 2;
    for (int g = 0; g < n_g; ++g) {
        float* row = scores + g * padded;
        f32.softmax(row, visible);
        std::fill(row + visible, row + used, 0.0f);
        for (int64_t i = 0; i < used; i += 32) _mm512_store_si512(probs + g * pairs + i / 2, pair_words(row + i));
    }
    for (int g = n_g; g < kHeads; ++g) std::fill(probs + g * pairs, probs + g * pairs + used / 2, 0u);

    for (int c0 = 0; c0 < s.kv_rank; c0 += kChannels) {
        __m512 acc[kHeads][2];
        pair_tile(probs, pairs, l.values + (c0 / kChannels) * pairs * kChannels, used_pairs, acc);
        for (int g = 0; g < n_g; ++g) {
            _mm512_storeu_ps(out + int64_t(g) * s.kv_rank + c0, acc[g][0]);
            _mm512_storeu_ps(out + int64_t(g) * s.kv_rank + c0 + 16, acc[g][1]);
        }
    }
}

}  // namespace

void mla_attention_absorbed_bf16(const AttentionShape& shape, int64_t n_tokens, const float* q_latent,
                                 const float* q_rope, const float* cache_latent, const float* cache_rope,
                                 const int64_t* n_visible, float* out, float* scratch, ThreadPool& pool) {
    if (!bf16_attention_supported(shape))
        fail(ErrorKind::internal, "bf16 attention on a CPU or shape without it (AVX-512 BF16, kv_rank % 32, rope % 32)");
    int64_t n_ctx = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
        if (n_visible[t] <= 0) fail(ErrorKind::internal, "attention: query token {} sees no cache rows", t);
        n_ctx = std::max(n_ctx, n_visible[t]);
    }
    const Bf16Scratch sizes = bf16_scratch_words(shape, n_ctx);
    auto* words = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
    const Layouts l{shape, n_ctx, padded_positions(n_ctx), key_words(shape), cache_latent, cache_rope,
                    words, words + sizes.keys};
    uint32_t* per_thread = words + sizes.keys + sizes.values;
    pool.parallel_for(l.padded / kTile, [&](int64_t begin, int64_t end, int) {
        for (int64_t tile = begin; tile < end; ++tile) convert_tile(l, tile);
    });
    const int n_heads = shape.n_heads;
    const int64_t groups = (n_heads + kHeads - 1) / kHeads;
    pool.parallel_for(n_tokens * groups, [&](int64_t begin, int64_t end, int thread) {
        for (int64_t item = begin; item < end; ++item) {
            const int64_t t = item / groups;
            const int h0 = int(item % groups) * kHeads;
            const int64_t row = t * n_heads + h0;
            attend_heads(l, q_latent + row * shape.kv_rank, q_rope + row * shape.rope_dim, std::min(kHeads, n_heads - h0),
                         n_visible[t], out + row * shape.kv_rank, per_thread + sizes.per_thread * thread);
        }
    });
}

namespace {

// One head's block of expanded positions into the two layouts, positions past n_positions as zeros:
// keys [padded / kTile][key_words][kTile] (words of [k_nope | k_rope]), values
// [v_dim / kChannels][padded / 2][kChannels] (channel c of positions 2i and 2i + 1).
void convert_head_block(const DecompressedAttentionShape& s, const float* kv, int64_t kv_row, const float* k_rope,
                        int64_t n_positions, const DecompressedBf16Words& w, uint32_t* keys, uint32_t* values) {
    for (int64_t p0 = 0; p0 < w.padded; p0 += 16) {
        const int64_t tile = p0 / kTile, half = (p0 % kTile) / 16;
        for (int64_t block = 0; block < w.key_words / 16; ++block) {
            const int64_t f = 32 * block;
            __m512i r[16];
            for (int i = 0; i < 16; ++i) {
                const int64_t p = p0 + i;
                r[i] = p >= n_positions ? _mm512_setzero_si512()
                                        : pair_words(f < s.nope_dim ? kv + p * kv_row + f : k_rope + p * s.rope_dim + (f - s.nope_dim));
            }
            transpose_16x16_words(r);
            uint32_t* dst = keys + (tile * w.key_words + 16 * block) * kTile + 16 * half;
            for (int c = 0; c < 16; ++c) _mm512_store_si512(dst + c * kTile, r[c]);
        }
    }
    const int64_t pairs = w.padded / 2;
    const float* v = kv + s.nope_dim;
    for (int64_t i = 0; i < pairs; ++i) {
        const int64_t p = 2 * i;
        for (int c = 0; c < s.v_dim; c += 16) {
            const float* a = v + p * kv_row + c;
            const __m512i word = p + 1 < n_positions ? pair_lanes(a, a + kv_row)
                                 : p < n_positions   ? bf16_lanes(a)
                                                     : _mm512_setzero_si512();
            _mm512_store_si512(values + ((c / kChannels) * pairs + i) * kChannels + c % kChannels, word);
        }
    }
}

}  // namespace

void mla_attention_decompressed_block_bf16(const DecompressedAttentionShape& shape, int64_t n_tokens, const float* q,
                                           const float* q_rope, const float* kv, const float* k_rope, int64_t first,
                                           int64_t n_positions, const int64_t* n_visible, float* out,
                                           float* running_max, float* running_sum, float* scratch, ThreadPool& pool) {
    if (!bf16_decompressed_supported(shape))
        fail(ErrorKind::internal, "bf16 decompressed attention on a CPU or shape without it (AVX-512 BF16, nope, "
                                  "rope and v % 32)");
    const DecompressedBf16Words w = decompressed_bf16_words(shape, n_positions);
    const int n_heads = shape.n_heads, nope = shape.nope_dim, rope = shape.rope_dim, vd = shape.v_dim;
    const int64_t kv_head = nope + vd, kv_row = int64_t(n_heads) * kv_head, pairs = w.padded / 2;
    const int64_t q_token_stride = int64_t(n_heads) * shape.q_head_stride, rope_token_stride = int64_t(n_heads) * rope;
    auto* words = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
    const detail::PathKernels& f32 = detail::path_kernels(CpuPath::avx512);
    const __m512 scale = _mm512_set1_ps(shape.scale);
    // A head a work item: its block turned into bf16 once for all its query groups.
    pool.parallel_for(n_heads, [&](int64_t h0, int64_t h1, int thread) {
        uint32_t* keys = words + w.per_thread * thread;
        uint32_t* values = keys + w.keys;
        uint32_t* query = values + w.values;
        float* scores = reinterpret_cast<float*>(query + w.query);  // [kQueries][padded]
        uint32_t* probs = reinterpret_cast<uint32_t*>(scores + w.scores);  // [kQueries][pairs]
        for (int64_t h = h0; h < h1; ++h) {
            convert_head_block(shape, kv + h * kv_head, kv_row, k_rope, n_positions, w, keys, values);
            for (int64_t t0 = 0; t0 < n_tokens; t0 += kQueries) {
                const int n_g = int(std::min<int64_t>(kQueries, n_tokens - t0));
                int64_t seen = 0;  // positions of this block any query of the group sees
                for (int g = 0; g < n_g; ++g) seen = std::max(seen, std::min(n_visible[t0 + g] - first, n_positions));
                if (seen <= 0) continue;
                for (int g = 0; g < kQueries; ++g)
                    for (int64_t b = 0; b < w.key_words / 16; ++b) {
                        const int64_t f = 32 * b, t = t0 + g;
                        const __m512i word = g >= n_g ? _mm512_setzero_si512()
                                             : pair_words(f < nope ? q + t * q_token_stride + h * shape.q_head_stride + f
                                                                   : q_rope + t * rope_token_stride + h * rope + (f - nope));
                        _mm512_storeu_si512(query + g * w.key_words + 16 * b, word);
                    }
                const int64_t tiles = (seen + kTile - 1) / kTile, used = tiles * kTile;
                for (int64_t tile = 0; tile < tiles; ++tile) {
                    __m512 acc[kQueries][2];
                    pair_tile(query, w.key_words, keys + tile * w.key_words * kTile, w.key_words, acc);
                    for (int g = 0; g < kQueries; ++g) {
                        _mm512_store_ps(scores + g * w.padded + tile * kTile, _mm512_mul_ps(acc[g][0], scale));
                        _mm512_store_ps(scores + g * w.padded + tile * kTile + 16, _mm512_mul_ps(acc[g][1], scale));
                    }
                }
                // The online softmax over the positions each query sees (as the f32 form): what
                // earlier blocks summed is rescaled to the new running max; the rest of the tiles
                // (causal mask, padding) get probability 0; the probabilities go on as position pairs.
                float carry[kQueries];
                for (int g = 0; g < kQueries; ++g) {
                    float* row = scores + g * w.padded;
                    carry[g] = 1.0f;
                    int64_t own = g < n_g ? std::max<int64_t>(0, std::min(n_visible[t0 + g] - first, n_positions)) : 0;
                    const float block_max = own > 0 ? f32.max_of(row, own) : 0.0f;
                    if (block_max == -std::numeric_limits<float>::infinity()) own = 0;  // as the f32 form: skip it
                    if (own > 0) {
                        const int64_t stat = (t0 + g) * n_heads + h;
                        const float new_max = std::max(running_max[stat], block_max);
                        carry[g] = std::exp(running_max[stat] - new_max);  // 0 for the first block seen
                        running_sum[stat] = running_sum[stat] * carry[g] + f32.exp_sum(row, own, new_max);
                        running_max[stat] = new_max;
                    }
                    std::fill(row + own, row + used, 0.0f);
                    for (int64_t i = 0; i < used; i += 32) _mm512_store_si512(probs + g * pairs + i / 2, pair_words(row + i));
                }
                for (int c0 = 0; c0 < vd; c0 += kChannels) {
                    __m512 acc[kQueries][2];
                    // Pairs of positions up to the last seen (0 x inf in the tile's rest would be NaN).
                    pair_tile(probs, pairs, values + (c0 / kChannels) * pairs * kChannels, (seen + 1) / 2, acc);
                    for (int g = 0; g < n_g; ++g) {
                        float* o = out + ((t0 + g) * n_heads + h) * vd + c0;
                        const __m512 c = _mm512_set1_ps(carry[g]);
                        _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_loadu_ps(o), c, acc[g][0]));
                        _mm512_storeu_ps(o + 16, _mm512_fmadd_ps(_mm512_loadu_ps(o + 16), c, acc[g][1]));
                    }
                }
            }
        }
    });
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif

}  // namespace sluice::cpu
