#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/cpu/ops.hpp"

using namespace sluice;
using namespace sluice::cpu;

namespace {

std::vector<float> random_floats(std::mt19937& rng, size_t n, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

// A small MLA layer's attention inputs: latents and roped keys for n_ctx cached tokens, queries
// for the last n_tokens of them, and random per-head up-projections W_UK [nope, rank], W_UV [v, rank].
struct MlaCase {
    int n_heads = 3, kv_rank = 37, rope_dim = 8, nope_dim = 16, v_dim = 12;
    int64_t n_ctx = 29, n_tokens = 5;
    float scale = 0.3f;
    std::vector<float> latent, k_pe, q_nope, q_pe, w_uk, w_uv;
    std::vector<int64_t> n_visible;

    MlaCase(uint32_t seed, int heads) : n_heads(heads) {
        std::mt19937 rng(seed);
        latent = random_floats(rng, size_t(n_ctx * kv_rank), 1.0f);
        k_pe = random_floats(rng, size_t(n_ctx * rope_dim), 1.0f);
        q_nope = random_floats(rng, size_t(n_tokens * n_heads * nope_dim), 1.0f);
        q_pe = random_floats(rng, size_t(n_tokens * n_heads * rope_dim), 1.0f);
        w_uk = random_floats(rng, size_t(n_heads * nope_dim * kv_rank), 0.2f);
        w_uv = random_floats(rng, size_t(n_heads * v_dim * kv_rank), 0.2f);
        for (int64_t t = 0; t < n_tokens; ++t) n_visible.push_back(n_ctx - n_tokens + t + 1);  // causal
    }
    float uk(int h, int i, int c) const { return w_uk[size_t((h * nope_dim + i) * kv_rank + c)]; }
    float uv(int h, int i, int c) const { return w_uv[size_t((h * v_dim + i) * kv_rank + c)]; }
};

// Spec §2.7 in double, straight from the latents: the ground truth for both forms.
std::vector<double> reference_attention(const MlaCase& m) {
    const int H = m.n_heads;
    std::vector<double> out(size_t(m.n_tokens * H * m.v_dim), 0.0);
    for (int64_t t = 0; t < m.n_tokens; ++t) {
        for (int h = 0; h < H; ++h) {
            const int64_t row = t * H + h;
            std::vector<double> s(size_t(m.n_visible[size_t(t)]));
            double max_s = -INFINITY;
            for (int64_t j = 0; j < m.n_visible[size_t(t)]; ++j) {
                double dot = 0;
                for (int i = 0; i < m.nope_dim; ++i) {
                    double k = 0;
                    for (int c = 0; c < m.kv_rank; ++c) k += double(m.uk(h, i, c)) * m.latent[size_t(j * m.kv_rank + c)];
                    dot += k * m.q_nope[size_t(row * m.nope_dim + i)];
                }
                for (int i = 0; i < m.rope_dim; ++i)
                    dot += double(m.q_pe[size_t(row * m.rope_dim + i)]) * m.k_pe[size_t(j * m.rope_dim + i)];
                s[size_t(j)] = m.scale * dot;
                max_s = std::max(max_s, s[size_t(j)]);
            }
            double sum = 0;
            for (double& v : s) sum += v = std::exp(v - max_s);
            for (int64_t j = 0; j < m.n_visible[size_t(t)]; ++j) {
                for (int i = 0; i < m.v_dim; ++i) {
                    double v = 0;
                    for (int c = 0; c < m.kv_rank; ++c) v += double(m.uv(h, i, c)) * m.latent[size_t(j * m.kv_rank + c)];
                    out[size_t(row * m.v_dim + i)] += s[size_t(j)] / sum * v;
                }
            }
        }
    }
    return out;
}

// fp32 dots of <= 53 terms and a softmax over <= 29 rows on O(1) data.
constexpr double kTolerance = 1e-4;

}  // namespace

namespace {

void check_absorbed_and_decompressed_against_reference(int n_heads, bool from_start) {
    MlaCase m(30, n_heads);
    if (from_start) {
        // A prefill from position 0: the first queries see only the first block, so later blocks
        // are wholly masked for them.
        m.n_tokens = m.n_ctx;
        std::mt19937 rng(32);
        m.q_nope = random_floats(rng, size_t(m.n_tokens * n_heads * m.nope_dim), 1.0f);
        m.q_pe = random_floats(rng, size_t(m.n_tokens * n_heads * m.rope_dim), 1.0f);
        m.n_visible.clear();
        for (int64_t t = 0; t < m.n_tokens; ++t) m.n_visible.push_back(t + 1);
    }
    const int H = m.n_heads, qk = m.nope_dim + m.rope_dim;
    const std::vector<double> want = reference_attention(m);

    // Absorbed inputs: q~ = W_UK^T q_nope per head; the cache holds latents and k_pe only.
    std::vector<float> q_latent(size_t(m.n_tokens * H * m.kv_rank));
    for (int64_t row = 0; row < m.n_tokens * H; ++row) {
        const int h = int(row % H);
        for (int c = 0; c < m.kv_rank; ++c) {
            double sum = 0;
            for (int i = 0; i < m.nope_dim; ++i) sum += double(m.uk(h, i, c)) * m.q_nope[size_t(row * m.nope_dim + i)];
            q_latent[size_t(row * m.kv_rank + c)] = float(sum);
        }
    }
    // Decompressed inputs: per position and head [W_UK c | W_UV c]; queries [q_nope | q_pe] per head.
    const int kv_head = m.nope_dim + m.v_dim;
    std::vector<float> kv(size_t(m.n_ctx * H * kv_head)), q(size_t(m.n_tokens * H * qk));
    for (int64_t j = 0; j < m.n_ctx; ++j) {
        for (int h = 0; h < H; ++h) {
            for (int i = 0; i < m.nope_dim; ++i) {
                double sum = 0;
                for (int c = 0; c < m.kv_rank; ++c) sum += double(m.uk(h, i, c)) * m.latent[size_t(j * m.kv_rank + c)];
                kv[size_t((j * H + h) * kv_head + i)] = float(sum);
            }
            for (int i = 0; i < m.v_dim; ++i) {
                double sum = 0;
                for (int c = 0; c < m.kv_rank; ++c) sum += double(m.uv(h, i, c)) * m.latent[size_t(j * m.kv_rank + c)];
                kv[size_t((j * H + h) * kv_head + m.nope_dim + i)] = float(sum);
            }
        }
    }
    for (int64_t row = 0; row < m.n_tokens * H; ++row) {
        for (int i = 0; i < m.nope_dim; ++i) q[size_t(row * qk + i)] = m.q_nope[size_t(row * m.nope_dim + i)];
        for (int i = 0; i < m.rope_dim; ++i) q[size_t(row * qk + m.nope_dim + i)] = NAN;  // unused: q_rope is
    }

    const AttentionShape shape{H, m.kv_rank, m.rope_dim, m.scale};
    const DecompressedAttentionShape decompressed{H, m.nope_dim, m.rope_dim, m.v_dim, qk, m.scale};
    for (int n_threads : {1, 4}) {
        ThreadPool pool(n_threads);
        std::vector<float> scratch(size_t(attention_scratch_floats(shape, m.n_ctx, pool.size())));
        std::vector<float> block_scratch(
            size_t(decompressed_attention_scratch_floats(decompressed, m.n_ctx, pool.size())));
        for (CpuPath path : detail::supported_paths()) {
            // one block of every position; blocks of 7 (the softmax carried across 5 blocks)
            for (int64_t block : {m.n_ctx, int64_t(7)}) {
                const std::string path_label = detail::path_name(path);
                CAPTURE(path_label);
                CAPTURE(n_threads);
                CAPTURE(block);
                std::vector<float> latent_out(size_t(m.n_tokens * H * m.kv_rank), NAN);
                detail::mla_attention_absorbed_on_path(path, shape, m.n_tokens, q_latent.data(), m.q_pe.data(),
                                                       m.latent.data(), m.k_pe.data(), m.n_visible.data(),
                                                       latent_out.data(), scratch.data(), pool);
                std::vector<float> decompressed_out(size_t(m.n_tokens * H * m.v_dim), NAN);
                std::vector<float> running_max(size_t(m.n_tokens * H)), running_sum(size_t(m.n_tokens * H));
                mla_decompressed_begin(decompressed, m.n_tokens, decompressed_out.data(), running_max.data(), running_sum.data());
                for (int64_t first = 0; first < m.n_ctx; first += block)
                    detail::mla_attention_decompressed_block_on_path(
                        path, decompressed, m.n_tokens, q.data(), m.q_pe.data(), kv.data() + first * H * kv_head,
                        m.k_pe.data() + first * m.rope_dim, first, std::min(block, m.n_ctx - first), m.n_visible.data(),
                        decompressed_out.data(), running_max.data(), running_sum.data(), block_scratch.data(), pool);
                mla_decompressed_end(decompressed, m.n_tokens, decompressed_out.data(), running_sum.data());
                int bad_absorbed = 0, bad_decompressed = 0;
                for (int64_t row = 0; row < m.n_tokens * H; ++row) {
                    const int h = int(row % H);
                    for (int i = 0; i < m.v_dim; ++i) {
                        // Un-absorb: o = W_UV ô.
                        double o = 0;
                        for (int c = 0; c < m.kv_rank; ++c) o += double(m.uv(h, i, c)) * latent_out[size_t(row * m.kv_rank + c)];
                        const double ref = want[size_t(row * m.v_dim + i)];
                        if (!(std::abs(o - ref) <= kTolerance)) ++bad_absorbed;
                        if (!(std::abs(decompressed_out[size_t(row * m.v_dim + i)] - ref) <= kTolerance)) ++bad_decompressed;
                    }
                }
                CHECK(bad_absorbed == 0);
                CHECK(bad_decompressed == 0);
            }
        }
    }
}

}  // namespace

TEST_CASE("absorbed MLA equals decompressed MLA and the double reference on random weights, every path") {
    for (int n_heads : {3, 11}) {  // one partial head group; a full group of 8 plus a partial one
        for (bool from_start : {false, true}) {
            CAPTURE(n_heads);
            CAPTURE(from_start);
            check_absorbed_and_decompressed_against_reference(n_heads, from_start);
        }
    }
}

TEST_CASE("a query that sees one cache row returns that row's latent exactly") {
    const MlaCase m(31, 3);
    const AttentionShape shape{m.n_heads, m.kv_rank, m.rope_dim, m.scale};
    ThreadPool pool(2);
    std::vector<float> scratch(size_t(attention_scratch_floats(shape, 1, pool.size())));
    const std::vector<float> q_latent(size_t(m.n_heads * m.kv_rank), 0.5f);
    const int64_t n_visible = 1;
    std::vector<float> out(size_t(m.n_heads * m.kv_rank));
    mla_attention_absorbed(shape, 1, q_latent.data(), m.q_pe.data(), m.latent.data(), m.k_pe.data(), &n_visible,
                           out.data(), scratch.data(), pool);
    for (int h = 0; h < m.n_heads; ++h)
        for (int c = 0; c < m.kv_rank; ++c) CHECK(out[size_t(h * m.kv_rank + c)] == m.latent[size_t(c)]);
}

namespace {

// Attention straight from its parts, in double, with the bound on bf16's error each output may
// show: the query and the keys rounded to bf16 (relative u = 2^-9 each) move a score by at most
// scale (2u + u^2) sum_i |q_i k_i| (the products and sums are f32: 1e-6 of that at most); the
// softmax turns score errors of at most ds into probability errors of at most 2 ds P_j, the
// probabilities and the values are rounded once more (u each), so |out - want| <= (2 ds + 2u)
// max_j |v_j| (sum_j P_j = 1), here with 10% and 1e-6 to spare. Both forms fit it: a key is
// [main | rope] and a value its own vector, each found by (row or position, head) strides.
struct AbsorbedWant {
    std::vector<double> out, bound;
};
struct Strided {
    const float* data;
    int64_t stride, head_stride;  // floats from one row (query: token x head; key: position) to the next, one head to the next
    const float* at(int64_t i, int64_t h) const { return data + i * stride + h * head_stride; }
};
struct ReferenceParts {
    int n_heads, main_dim, rope_dim, v_dim;
    float scale;
    Strided q_main, q_rope, k_main, k_rope, value;  // q_*: by (token x heads + head, 0); k_*, value: by (position, head)
};
AbsorbedWant bf16_attention_reference(const ReferenceParts& r, int64_t n_tokens, const std::vector<int64_t>& n_visible) {
    const double u = std::ldexp(1.0, -9);
    AbsorbedWant w{std::vector<double>(size_t(n_tokens * r.n_heads * r.v_dim)),
                   std::vector<double>(size_t(n_tokens * r.n_heads * r.v_dim))};
    for (int64_t t = 0; t < n_tokens; ++t)
        for (int h = 0; h < r.n_heads; ++h) {
            const int64_t row = t * r.n_heads + h, vis = n_visible[size_t(t)];
            std::vector<double> p(static_cast<size_t>(vis));
            double max_s = -INFINITY, ds = 0;
            for (int64_t j = 0; j < vis; ++j) {
                double dot = 0, mag = 0;
                for (const auto& [q, k, n] : {std::tuple{r.q_main.at(row, 0), r.k_main.at(j, h), r.main_dim},
                                              std::tuple{r.q_rope.at(row, 0), r.k_rope.at(j, h), r.rope_dim}})
                    for (int i = 0; i < n; ++i) {
                        const double x = double(q[i]) * k[i];
                        dot += x;
                        mag += std::fabs(x);
                    }
                p[size_t(j)] = r.scale * dot;
                ds = std::max(ds, r.scale * (2 * u + u * u + 1e-6) * mag);
                max_s = std::max(max_s, p[size_t(j)]);
            }
            double sum = 0;
            for (double& v : p) sum += v = std::exp(v - max_s);
            for (int c = 0; c < r.v_dim; ++c) {
                double o = 0, c_max = 0;
                for (int64_t j = 0; j < vis; ++j) {
                    const double v = r.value.at(j, h)[c];
                    o += p[size_t(j)] / sum * v;
                    c_max = std::max(c_max, std::fabs(v));
                }
                w.out[size_t(row * r.v_dim + c)] = o;
                w.bound[size_t(row * r.v_dim + c)] = 1.1 * (2 * ds + 2 * u) * c_max + 1e-6;
            }
        }
    return w;
}

// The absorbed form: q~ against the latents (every head's key and value), q_pe against k_pe.
AbsorbedWant absorbed_reference(const AttentionShape& s, int64_t n_tokens, const std::vector<float>& q_latent,
                                const std::vector<float>& q_rope, const std::vector<float>& latent,
                                const std::vector<float>& rope, const std::vector<int64_t>& n_visible) {
    return bf16_attention_reference({s.n_heads, s.kv_rank, s.rope_dim, s.kv_rank, s.scale, {q_latent.data(), s.kv_rank, 0},
                                     {q_rope.data(), s.rope_dim, 0}, {latent.data(), s.kv_rank, 0},
                                     {rope.data(), s.rope_dim, 0}, {latent.data(), s.kv_rank, 0}},
                                    n_tokens, n_visible);
}

}  // namespace

TEST_CASE("bf16 absorbed attention: within bf16's rounding of the double reference, a token's bits the same alone or "
          "beside others") {
    // 11 heads: a group of 8 and a partial one; 45 and 70 positions: partial 32-position tiles,
    // odd and even counts seen (pairs of positions with no partner).
    for (const int64_t n_ctx : {45, 70}) {
        CAPTURE(n_ctx);
        const AttentionShape shape{11, 64, 32, 0.25f, AttentionMath::bf16};
        if (!bf16_attention_supported(shape)) {
            MESSAGE("this CPU has no AVX-512 BF16 (or SLUICE_CPU caps the path): bf16 attention not tested");
            return;
        }
        std::mt19937 rng(uint32_t(40 + n_ctx));
        const int64_t n_tokens = 5;
        const auto latent = random_floats(rng, size_t(n_ctx * shape.kv_rank), 1.0f);
        const auto rope = random_floats(rng, size_t(n_ctx * shape.rope_dim), 1.0f);
        const auto q_latent = random_floats(rng, size_t(n_tokens * shape.n_heads * shape.kv_rank), 0.3f);
        const auto q_rope = random_floats(rng, size_t(n_tokens * shape.n_heads * shape.rope_dim), 0.3f);
        std::vector<int64_t> n_visible;
        for (int64_t t = 0; t < n_tokens; ++t) n_visible.push_back(n_ctx - n_tokens + t + 1);
        ThreadPool pool(2);
        std::vector<float> scratch(size_t(attention_scratch_floats(shape, n_ctx, pool.size())));
        std::vector<float> out(size_t(n_tokens * shape.n_heads * shape.kv_rank));
        mla_attention_absorbed(shape, n_tokens, q_latent.data(), q_rope.data(), latent.data(), rope.data(),
                               n_visible.data(), out.data(), scratch.data(), pool);
        const AbsorbedWant want = absorbed_reference(shape, n_tokens, q_latent, q_rope, latent, rope, n_visible);
        int over = 0, beyond_f32 = 0;
        for (size_t i = 0; i < out.size(); ++i) {
            const double err = std::fabs(double(out[i]) - want.out[i]);
            over += err > want.bound[i];
            beyond_f32 += err > kTolerance;  // f32's own tolerance: bf16 must show here
        }
        CHECK(over == 0);
        CHECK(beyond_f32 > 0);

        const int64_t row_floats = shape.n_heads * shape.kv_rank;
        for (int64_t t = 0; t < n_tokens; ++t) {
            std::vector<float> alone(static_cast<size_t>(row_floats));
            mla_attention_absorbed(shape, 1, q_latent.data() + t * row_floats, q_rope.data() + t * shape.n_heads * shape.rope_dim,
                                   latent.data(), rope.data(), &n_visible[size_t(t)], alone.data(), scratch.data(), pool);
            CHECK(std::equal(alone.begin(), alone.end(), out.begin() + t * row_floats));
        }
    }
}

namespace {

// The decompressed form's block products: q_nope against each head's expanded keys, q_pe against
// the shared rope keys, the head's expanded values.
AbsorbedWant decompressed_reference(const DecompressedAttentionShape& s, int64_t n_tokens, const std::vector<float>& q,
                                    const std::vector<float>& q_rope, const std::vector<float>& kv,
                                    const std::vector<float>& k_rope, const std::vector<int64_t>& n_visible) {
    const int64_t kv_head = s.nope_dim + s.v_dim, kv_row = s.n_heads * kv_head;
    return bf16_attention_reference({s.n_heads, s.nope_dim, s.rope_dim, s.v_dim, s.scale, {q.data(), s.q_head_stride, 0},
                                     {q_rope.data(), s.rope_dim, 0}, {kv.data(), kv_row, kv_head},
                                     {k_rope.data(), s.rope_dim, 0}, {kv.data() + s.nope_dim, kv_row, kv_head}},
                                    n_tokens, n_visible);
}

// begin, blocks of `block` positions, end: the decompressed form as the forward drives it.
std::vector<float> run_decompressed(const DecompressedAttentionShape& s, int64_t n_tokens, const float* q,
                                    const float* q_rope, const std::vector<float>& kv, const std::vector<float>& k_rope,
                                    int64_t n_ctx, int64_t block, const int64_t* n_visible, ThreadPool& pool) {
    std::vector<float> out(size_t(n_tokens * s.n_heads * s.v_dim)), running_max(size_t(n_tokens * s.n_heads)),
        running_sum(size_t(n_tokens * s.n_heads));
    std::vector<float> scratch(size_t(decompressed_attention_scratch_floats(s, block, pool.size())));
    const int64_t kv_row = s.n_heads * (s.nope_dim + s.v_dim);
    mla_decompressed_begin(s, n_tokens, out.data(), running_max.data(), running_sum.data());
    for (int64_t first = 0; first < n_ctx; first += block)
        mla_attention_decompressed_block(s, n_tokens, q, q_rope, kv.data() + first * kv_row, k_rope.data() + first * s.rope_dim,
                                         first, std::min(block, n_ctx - first), n_visible, out.data(), running_max.data(),
                                         running_sum.data(), scratch.data(), pool);
    mla_decompressed_end(s, n_tokens, out.data(), running_sum.data());
    return out;
}

}  // namespace

TEST_CASE("bf16 decompressed attention: within bf16's rounding of the double reference across blocks, a token's "
          "bits the same alone or beside others") {
    // 11 heads; 13 queries after a past of 57 (a group of 8 and a partial one) and a 45-token
    // prefill from position 0 (later blocks wholly masked for the first queries); blocks of every
    // position and of 20 (partial 32-position tiles, odd counts of positions in pairs).
    const DecompressedAttentionShape shape{11, 32, 32, 64, 64, 0.2f, AttentionMath::bf16};
    if (!bf16_decompressed_supported(shape)) {
        MESSAGE("this CPU has no AVX-512 BF16 (or SLUICE_CPU caps the path): bf16 decompressed attention not tested");
        return;
    }
    for (const auto& [n_ctx, n_tokens] : {std::pair<int64_t, int64_t>{70, 13}, {45, 45}}) {
        for (const int64_t block : {n_ctx, int64_t(20)}) {
            CAPTURE(n_ctx);
            CAPTURE(n_tokens);
            CAPTURE(block);
            std::mt19937 rng(uint32_t(50 + n_ctx + block));
            const int64_t kv_head = shape.nope_dim + shape.v_dim;
            const auto kv = random_floats(rng, size_t(n_ctx * shape.n_heads * kv_head), 1.0f);
            const auto k_rope = random_floats(rng, size_t(n_ctx * shape.rope_dim), 1.0f);
            auto q = random_floats(rng, size_t(n_tokens * shape.n_heads * shape.q_head_stride), 0.4f);
            for (int64_t row = 0; row < n_tokens * shape.n_heads; ++row)  // the rope part of q is q_rope's
                std::fill_n(q.begin() + row * shape.q_head_stride + shape.nope_dim, shape.q_head_stride - shape.nope_dim, NAN);
            const auto q_rope = random_floats(rng, size_t(n_tokens * shape.n_heads * shape.rope_dim), 0.4f);
            std::vector<int64_t> n_visible;
            for (int64_t t = 0; t < n_tokens; ++t) n_visible.push_back(n_ctx - n_tokens + t + 1);
            ThreadPool pool(2);
            const auto out = run_decompressed(shape, n_tokens, q.data(), q_rope.data(), kv, k_rope, n_ctx, block,
                                              n_visible.data(), pool);
            const AbsorbedWant want = decompressed_reference(shape, n_tokens, q, q_rope, kv, k_rope, n_visible);
            int over = 0, beyond_f32 = 0;
            for (size_t i = 0; i < out.size(); ++i) {
                const double err = std::fabs(double(out[i]) - want.out[i]);
                over += !(err <= want.bound[i]);
                beyond_f32 += err > kTolerance;  // f32's own tolerance: bf16 must show here
            }
            CHECK(over == 0);
            CHECK(beyond_f32 > 0);
            const int64_t row_floats = shape.n_heads * shape.v_dim;
            for (const int64_t t : {int64_t(0), n_tokens / 2, n_tokens - 1}) {
                const auto alone = run_decompressed(shape, 1, q.data() + t * shape.n_heads * shape.q_head_stride,
                                                    q_rope.data() + t * shape.n_heads * shape.rope_dim, kv, k_rope, n_ctx,
                                                    block, &n_visible[size_t(t)], pool);
                CHECK(std::equal(alone.begin(), alone.end(), out.begin() + t * row_floats));
            }
        }
    }
}
