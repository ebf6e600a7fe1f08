#include "engine/deepseek_v3.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/matmul_transposed.hpp"
#include "kernels/cpu/ops.hpp"

namespace sluice {

namespace {
int64_t max_of(std::initializer_list<int64_t> v) { return *std::max_element(v.begin(), v.end()); }
}  // namespace

cpu::DecompressedAttentionShape DeepseekForward::decompressed_shape(const ModelLayout& d) {
    return {int(d.n_heads), int(d.nope), int(d.rope_dim), int(d.v_dim), int(d.qk_head), d.softmax_scale};
}

// A kv_rank row for the transposed absorb product, or the rows transpose_to_f32 turns at a time.
int64_t DeepseekForward::row_scratch_floats(const ModelLayout& d) {
    return std::max(d.kv_rank, cpu::transpose_scratch_floats(d.nope));
}

AttentionForm parse_attention_form(const std::string& text) {
    if (text == "auto") return AttentionForm::automatic;
    if (text == "absorbed") return AttentionForm::absorbed;
    if (text == "decompressed") return AttentionForm::decompressed;
    fail(ErrorKind::invalid_input, "--attention: expected auto, absorbed or decompressed, got '{}'", text);
}

const char* attention_form_name(AttentionForm form) {
    switch (form) {
        case AttentionForm::automatic: return "auto";
        case AttentionForm::absorbed: return "absorbed";
        case AttentionForm::decompressed: return "decompressed";
    }
    return "?";
}

int64_t DeepseekForward::decompress_block_for(const ForwardOptions& o) {
    return std::min(o.shape.positions, o.decompress_block > 0 ? o.decompress_block : kDecompressBlockPositions);
}

int64_t DeepseekForward::widest_matrix_cols(const ModelLayout& d) {
    return max_of({d.hidden, d.q_lora, d.kv_rank, d.nope, d.n_heads * d.v_dim, d.dense_inter, d.moe_inter,
                   d.n_shared * d.moe_inter});
}

template <typename Visit>
void DeepseekForward::each_buffer(const ModelLayout& d, const ForwardOptions& o, int n_threads, Visit&& visit) {
    const int64_t n = o.shape.step_tokens;
    // Activations, [step_tokens, width] each.
    visit(&DeepseekForward::x_, n * d.hidden);
    visit(&DeepseekForward::normed_, n * d.hidden);
    visit(&DeepseekForward::q_compressed_, n * std::max<int64_t>(d.q_lora, 1));
    visit(&DeepseekForward::q_, n * d.n_heads * d.qk_head);
    visit(&DeepseekForward::kv_compressed_, n * d.cache_width());
    visit(&DeepseekForward::q_latent_, n * d.n_heads * d.kv_rank);
    visit(&DeepseekForward::q_rope_, n * d.n_heads * d.rope_dim);
    visit(&DeepseekForward::attn_latent_, n * d.n_heads * d.kv_rank);
    visit(&DeepseekForward::attn_heads_, n * d.n_heads * d.v_dim);
    visit(&DeepseekForward::branch_out_, n * d.hidden);
    visit(&DeepseekForward::router_logits_, n * std::max<int64_t>(d.n_experts, 1));
    const int64_t widest = max_of({d.dense_inter, d.moe_inter, d.n_shared * d.moe_inter, 1});
    visit(&DeepseekForward::expert_in_, n * d.hidden);
    visit(&DeepseekForward::expert_gate_, n * widest);
    visit(&DeepseekForward::expert_up_, n * widest);
    // Routed expert outputs are kept per (token, expert) pair and summed in a fixed order, so
    // the result does not depend on the order in which experts arrive from disk.
    const int64_t k = std::max(d.router.top_k, 1);
    visit(&DeepseekForward::expert_out_, n * k * d.hidden);
    const cpu::AttentionShape shape{int(d.n_heads), int(d.kv_rank), int(d.rope_dim), d.softmax_scale};
    visit(&DeepseekForward::row_scratch_, int64_t(n_threads) * row_scratch_floats(d));
    visit(&DeepseekForward::attention_scratch_, cpu::attention_scratch_floats(shape, o.shape.positions, n_threads));
    const int64_t block = decompress_block_for(o);
    visit(&DeepseekForward::kv_block_, block * d.n_heads * (d.nope + d.v_dim));
    if (d.split_kv_b) visit(&DeepseekForward::w_uk_, d.n_heads * d.nope * d.kv_rank);
    visit(&DeepseekForward::running_max_, n * d.n_heads);
    visit(&DeepseekForward::running_sum_, n * d.n_heads);
    visit(&DeepseekForward::decompressed_scratch_,
          cpu::decompressed_attention_scratch_floats(decompressed_shape(d), block, n_threads));
    // Routing bookkeeping (resize: indexed; reserve: appended to in a step).
    visit(&DeepseekForward::expert_ids_, n * k, false);
    visit(&DeepseekForward::expert_weights_, n * k, false);
    visit(&DeepseekForward::expert_count_, d.n_experts, false);
    visit(&DeepseekForward::predicted_mark_, d.n_experts, false);
    visit(&DeepseekForward::needed_experts_, d.n_experts, true);
    visit(&DeepseekForward::predicted_experts_, d.n_experts, true);
    visit(&DeepseekForward::expert_begin_, d.n_experts + 1, false);
    visit(&DeepseekForward::routed_token_, n * k, false);
    visit(&DeepseekForward::routed_weight_, n * k, false);
    visit(&DeepseekForward::n_visible_, n, false);
    visit(&DeepseekForward::positions_, n, false);
    visit(&DeepseekForward::step_tokens_, n, false);
    visit(&DeepseekForward::step_sequence_, n, false);
    visit(&DeepseekForward::groups_, n, true);
    visit(&DeepseekForward::logit_rows_, n, true);
    // Latent cache per (sequence, layer): normalised latent [positions, kv_rank] and roped key
    // [positions, rope]; index sequence * n_layers + layer.
    const int64_t n_caches = int64_t(o.shape.n_sequences) * d.n_layers;
    visit(&DeepseekForward::cache_latent_, n_caches, o.shape.positions * d.kv_rank);
    visit(&DeepseekForward::cache_rope_, n_caches, o.shape.positions * d.rope_dim);
}

namespace {

size_t float_bytes(int64_t floats) { return size_t(std::max<int64_t>(floats, 1)) * sizeof(float); }

// each_buffer's visitors: one adds up what a forward would hold, the other allocates it.
struct CountBuffers {
    DeepseekForward::Bytes bytes;
    void operator()(AlignedBuffer DeepseekForward::*, int64_t floats) {
        bytes.activations += AlignedBuffer::held_bytes(float_bytes(floats));
    }
    template <typename T> void operator()(std::vector<T> DeepseekForward::*, int64_t count, bool) {
        bytes.activations += uint64_t(std::max<int64_t>(count, 0)) * sizeof(T);
    }
    void operator()(std::vector<AlignedBuffer> DeepseekForward::*, int64_t n, int64_t floats) {
        bytes.mla_cache += uint64_t(n) * AlignedBuffer::held_bytes(float_bytes(floats));
    }
};

struct AllocateBuffers {
    DeepseekForward& f;
    int64_t& allocated;
    void operator()(AlignedBuffer DeepseekForward::*member, int64_t floats) {
        (f.*member).allocate(float_bytes(floats));
        allocated += int64_t((f.*member).held());
    }
    template <typename T> void operator()(std::vector<T> DeepseekForward::*member, int64_t count, bool reserve_only) {
        auto& v = f.*member;
        v.reserve(size_t(count));  // exactly that: resize alone may take more
        if (!reserve_only) v.resize(size_t(count));
        allocated += int64_t(v.capacity() * sizeof(T));
    }
    void operator()(std::vector<AlignedBuffer> DeepseekForward::*member, int64_t n, int64_t floats) {
        auto& caches = f.*member;
        caches.resize(size_t(n));
        for (auto& c : caches) {
            c.allocate(float_bytes(floats));
            allocated += int64_t(c.held());
        }
    }
};

}  // namespace

DeepseekForward::Bytes DeepseekForward::bytes_for(const ModelLayout& d, const ForwardOptions& o, int n_threads) {
    CountBuffers count;
    each_buffer(d, o, n_threads, count);
    count.bytes.kernel_scratch =
        std::max(cpu::gemm_scratch_bytes(o.shape.step_tokens, widest_matrix_cols(d), n_threads),
                 cpu::gemm_scratch_bytes(decompress_block_for(o), d.kv_rank, n_threads));
    return count.bytes;
}

DeepseekForward::DeepseekForward(const ModelLayout& layout, WeightProvider& weights, ForwardOptions options,
                                 ThreadPool& pool)
    : layout_(layout), weights_(weights), options_(options), pool_(pool) {
    const auto& d = layout_;
    const RunShape& shape = options_.shape;
    if (shape.step_tokens <= 0 || shape.positions <= 0)
        fail(ErrorKind::invalid_input, "step tokens and positions must be positive");
    if (shape.n_sequences < 1) fail(ErrorKind::invalid_input, "at least one sequence is needed");
    each_buffer(d, options_, pool_.size(), AllocateBuffers{*this, allocated_bytes_});
    row_scratch_floats_ = row_scratch_floats(d);
    decompress_block_ = decompress_block_for(options_);
    // The kernels' own scratch, for the largest calls of a step, before the first one.
    cpu::reserve_gemm_scratch(shape.step_tokens, widest_matrix_cols(d), pool_);
    cpu::reserve_gemm_scratch(decompress_block_, d.kv_rank, pool_);
    n_past_.assign(size_t(shape.n_sequences), 0);
    rope_freq_ = cpu::yarn_frequencies(d.rope);
}

void DeepseekForward::truncate(int64_t n, int sequence) {
    if (sequence < 0 || sequence >= options_.shape.n_sequences)
        fail(ErrorKind::internal, "sequence {} of {}", sequence, options_.shape.n_sequences);
    if (n < 0 || n > n_past_[size_t(sequence)])
        fail(ErrorKind::internal, "truncate to {} with {} positions cached", n, n_past_[size_t(sequence)]);
    n_past_[size_t(sequence)] = n;
}

void DeepseekForward::forward(std::span<const int32_t> tokens, bool all_logits, float* logits) {
    const int64_t n = int64_t(tokens.size());
    for (int64_t begin = 0; begin < n; begin += options_.shape.step_tokens) {
        const int64_t count = std::min(options_.shape.step_tokens, n - begin);
        const bool last_chunk = begin + count == n;
        const SequenceTokens entry{0, tokens.subspan(size_t(begin), size_t(count)), all_logits};
        if (all_logits) forward_batch({&entry, 1}, logits + begin * layout_.vocab);
        else forward_batch({&entry, 1}, last_chunk ? logits : nullptr);
    }
}

void DeepseekForward::forward_batch(std::span<const SequenceTokens> batch, float* logits) {
    int64_t n = 0;
    groups_.clear();
    logit_rows_.clear();
    for (const auto& entry : batch) {
        const int64_t count = int64_t(entry.tokens.size());
        if (entry.sequence < 0 || entry.sequence >= options_.shape.n_sequences)
            fail(ErrorKind::invalid_input, "sequence {} is outside [0, {})", entry.sequence, options_.shape.n_sequences);
        const int64_t past = n_past_[size_t(entry.sequence)];
        if (past + count > options_.shape.positions)
            fail(ErrorKind::invalid_input, "context full: {} cached + {} new positions exceed the context of {}", past,
                 count, options_.shape.positions);
        if (n + count > options_.shape.step_tokens)
            fail(ErrorKind::invalid_input, "a step of more than {} tokens", options_.shape.step_tokens);
        for (const auto& g : groups_)
            if (g.sequence == entry.sequence)
                fail(ErrorKind::invalid_input, "sequence {} appears twice in one step", entry.sequence);
        if (count == 0) continue;
        groups_.push_back({entry.sequence, n, count});
        for (int64_t i = 0; i < count; ++i) {
            const int32_t token = entry.tokens[size_t(i)];
            if (token < 0 || token >= layout_.vocab)
                fail(ErrorKind::invalid_input, "token id {} is outside the vocabulary [0, {})", token, layout_.vocab);
            step_tokens_[size_t(n + i)] = token;
            step_sequence_[size_t(n + i)] = entry.sequence;
            positions_[size_t(n + i)] = past + i;
            n_visible_[size_t(n + i)] = past + i + 1;  // causal: itself and everything before
            if (entry.all_logits || i == count - 1) logit_rows_.push_back(n + i);
        }
        n += count;
    }
    if (n == 0) return;
    run_step(n, logits);
    for (const auto& g : groups_) n_past_[size_t(g.sequence)] += g.count;
}

void DeepseekForward::run_step(int64_t n, float* logits) {
    const auto& d = layout_;
    float* x = x_.as<float>();
    float* normed = normed_.as<float>();
    float* branch = branch_out_.as<float>();

    weights_.begin_step(n);
    // x: [n, hidden] = Embed[tokens]
    const ModelWeights& globals = weights_.globals();
    const auto& embed_type = block_type(globals.embed.type);
    for (int64_t t = 0; t < n; ++t)
        embed_type.dequantize_row(globals.embed.row(step_tokens_[size_t(t)]), x + t * d.hidden, d.hidden);

    for (int l = 0; l < d.n_layers; ++l) {
        const LayerWeights& w = weights_.begin_layer(l);
        // x = x + MLA(RMSNorm(x))
        for (int64_t t = 0; t < n; ++t) cpu::rms_norm(x + t * d.hidden, w.attn_norm, d.rms_eps, d.hidden, normed + t * d.hidden);
        attention(w, l, n);
        for (int64_t i = 0; i < n * d.hidden; ++i) x[i] += branch[i];
        // A MoE layer predicts after its own router has asked for its experts (in moe()), so its
        // reads queue ahead of the guesses for the next layer; a dense layer predicts here.
        if (!w.is_moe && weights_.wants_predictions()) predict_next_layer_experts(l, n);
        // x = x + MLP/MoE(RMSNorm(x))
        for (int64_t t = 0; t < n; ++t) cpu::rms_norm(x + t * d.hidden, w.ffn_norm, d.rms_eps, d.hidden, normed + t * d.hidden);
        if (w.is_moe) moe(w, l, n);
        else mlp(w.dense, normed, n, branch, false);
        for (int64_t i = 0; i < n * d.hidden; ++i) x[i] += branch[i];
        weights_.end_layer(l);
    }

    if (logits && !logit_rows_.empty()) {
        // logits = lm_head . RMSNorm(x) for the rows asked for, in fp32.
        const int64_t rows = int64_t(logit_rows_.size());
        for (int64_t r = 0; r < rows; ++r)
            cpu::rms_norm(x + logit_rows_[size_t(r)] * d.hidden, globals.final_norm, d.rms_eps, d.hidden,
                          normed + r * d.hidden);
        cpu::gemm(globals.lm_head, normed, d.hidden, rows, logits, d.vocab, pool_);
    }
    weights_.end_step();
}

// MLA (spec §2.4, §2.7, §2.8). Input: normed_ [n, hidden]. Output: branch_out_ [n, hidden].
void DeepseekForward::attention(const LayerWeights& w, int layer, int64_t n) {
    const auto& d = layout_;
    const float* a = normed_.as<float>();
    float* q = q_.as<float>();                      // [n, heads, qk_head] = [nope | rope] per head
    float* ckv = kv_compressed_.as<float>();        // [n, kv_rank + rope]
    const int64_t q_stride = d.n_heads * d.qk_head;

    if (d.q_lora > 0) {
        float* cq = q_compressed_.as<float>();      // [n, q_lora]
        cpu::gemm(w.q_a, a, d.hidden, n, cq, d.q_lora, pool_);
        for (int64_t t = 0; t < n; ++t) cpu::rms_norm(cq + t * d.q_lora, w.q_a_norm, d.latent_norm_eps, d.q_lora, cq + t * d.q_lora);
        cpu::gemm(w.q_b, cq, d.q_lora, n, q, q_stride, pool_);
    } else {
        cpu::gemm(w.q, a, d.hidden, n, q, q_stride, pool_);
    }
    cpu::gemm(w.kv_a, a, d.hidden, n, ckv, d.cache_width(), pool_);

    // Cache the normalised latent and the roped key of each new position, in its sequence's cache.
    float* q_rope = q_rope_.as<float>();            // [n, heads, rope]
    for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = positions_[size_t(t)];
        const size_t cache = size_t(step_sequence_[size_t(t)]) * size_t(d.n_layers) + size_t(layer);
        const float* row = ckv + t * d.cache_width();
        cpu::rms_norm(row, w.kv_a_norm, d.latent_norm_eps, d.kv_rank, cache_latent_[cache].as<float>() + pos * d.kv_rank);
        float* k_pe = cache_rope_[cache].as<float>() + pos * d.rope_dim;
        std::memcpy(k_pe, row + d.kv_rank, size_t(d.rope_dim) * sizeof(float));
        cpu::rope_interleaved(k_pe, int(d.rope_dim), pos, rope_freq_.data(), d.rope_magnitude);
        for (int64_t h = 0; h < d.n_heads; ++h) {
            float* q_pe = q_rope + (t * d.n_heads + h) * d.rope_dim;
            std::memcpy(q_pe, q + t * q_stride + h * d.qk_head + d.nope, size_t(d.rope_dim) * sizeof(float));
            cpu::rope_interleaved(q_pe, int(d.rope_dim), pos, rope_freq_.data(), d.rope_magnitude);
        }
    }

    // k_b holds W_UK^T per head ([kv_rank, nope]): for the decompressed form it is turned round once
    // per layer, whatever the number of sequences expanded, so the expansion is an ordinary GEMM
    // (the transposed product ran at 57 GFLOP/s, under half the f32 GEMM's rate).
    if (w.kv_b.rows == 0 &&
        std::any_of(groups_.begin(), groups_.end(), [&](const auto& g) { return use_decompressed(g.count, positions_[size_t(g.begin)]); })) {
        if (!w_uk_.data())
            fail(ErrorKind::invalid_input, "layer {}: attn_k_b in a model whose layout said kv_b (split_kv_b false)", layer);
        float* w_uk = w_uk_.as<float>();
        pool_.parallel_for(d.n_heads, [&](int64_t h0, int64_t h1, int thread) {
            float* scratch = row_scratch_.as<float>() + int64_t(thread) * row_scratch_floats_;
            for (int64_t h = h0; h < h1; ++h)
                cpu::transpose_to_f32(w.k_b.row_slice(h * d.kv_rank, d.kv_rank), w_uk + h * d.nope * d.kv_rank, scratch);
        });
    }
    // Per sequence, the cheaper form; consecutive absorbed groups go together (a batched decode).
    for (size_t g = 0; g < groups_.size();) {
        if (use_decompressed(groups_[g].count, positions_[size_t(groups_[g].begin)])) {
            attention_decompressed(w, layer, g++);
            continue;
        }
        size_t end = g + 1;
        while (end < groups_.size() &&
               !use_decompressed(groups_[end].count, positions_[size_t(groups_[end].begin)]))
            ++end;
        attention_absorbed(w, layer, g, end);
        g = end;
    }
    float* heads = attn_heads_.as<float>();         // [n, heads * v_dim]
    const int64_t heads_stride = d.n_heads * d.v_dim;
    cpu::gemm(w.o, heads, heads_stride, n, branch_out_.as<float>(), d.hidden, pool_);
}

// Under --attention auto, the form with fewer multiply-adds for `count` new positions after `past`
// cached ones, per head and layer. Absorbed: each query scores every visible position against the 576-wide latent and sums
// 512-wide latents, plus absorbing q_nope and un-absorbing the output (W_UK, W_UV per query).
// Decompressed: 192-wide scores and 128-wide values per visible position, plus expanding every
// visible position through kv_b once; that product runs at GEMM speed, about twice the rate of the
// attention loops (bench_gemv: Q4_K GEMM 250 GFLOP/s, absorbed attention ~110 on 2 threads), so it
// counts half. A prefill from position 0 of 2+ tokens is cheaper decompressed (the expansion per
// position costs what the absorption per query does); a decode step or a short chunk after a long
// context is cheaper absorbed.
bool DeepseekForward::use_decompressed(int64_t count, int64_t past) const {
    const auto& d = layout_;
    if (options_.attention != AttentionForm::automatic) return options_.attention == AttentionForm::decompressed;
    if (count < 2) return false;
    const double pairs = double(count) * (double(past) + double(count + 1) / 2);  // (query, visible position)
    const double projection = double(d.kv_rank) * double(d.nope + d.v_dim);
    const double absorbed = pairs * double(2 * d.kv_rank + d.rope_dim) + double(count) * projection;
    const double decompressed = pairs * double(d.qk_head + d.v_dim) + 0.5 * double(past + count) * projection;
    return decompressed < absorbed;
}

// Absorbed form (spec §2.8) for groups [first_group, end_group), whose tokens are contiguous.
void DeepseekForward::attention_absorbed(const LayerWeights& w, int layer, size_t first_group, size_t end_group) {
    const auto& d = layout_;
    const int64_t row0 = groups_[first_group].begin;
    const int64_t n = groups_[end_group - 1].begin + groups_[end_group - 1].count - row0;
    const int64_t q_stride = d.n_heads * d.qk_head;
    const float* q = q_.as<float>() + row0 * q_stride;
    // q~_h = W_UK_h^T . q_nope_h: [kv_rank] per head (absorb, spec §2.8).
    const int64_t latent_stride = d.n_heads * d.kv_rank;
    float* q_latent = q_latent_.as<float>() + row0 * latent_stride;  // [n, heads, kv_rank]
    const int64_t kv_b_head_rows = d.nope + d.v_dim;
    if (w.kv_b.rows > 0) {
        pool_.parallel_for(d.n_heads, [&](int64_t h0, int64_t h1, int thread) {
            float* scratch = row_scratch_.as<float>() + int64_t(thread) * row_scratch_floats_;
            for (int64_t h = h0; h < h1; ++h)
                cpu::gemm_transposed(w.kv_b.row_slice(h * kv_b_head_rows, d.nope), q + h * d.qk_head, q_stride, n,
                                     q_latent + h * d.kv_rank, latent_stride, scratch);
        });
    } else {
        for (int64_t h = 0; h < d.n_heads; ++h)
            cpu::gemm(w.k_b.row_slice(h * d.kv_rank, d.kv_rank), q + h * d.qk_head, q_stride, n,
                      q_latent + h * d.kv_rank, latent_stride, pool_);
    }

    float* attn = attn_latent_.as<float>() + row0 * latent_stride;  // [n, heads, kv_rank] = sum_t P * c_t
    const cpu::AttentionShape shape{int(d.n_heads), int(d.kv_rank), int(d.rope_dim), d.softmax_scale};
    for (size_t i = first_group; i < end_group; ++i) {
        const auto& g = groups_[i];
        const size_t cache = size_t(g.sequence) * size_t(d.n_layers) + size_t(layer);
        const int64_t r = g.begin - row0;
        cpu::mla_attention_absorbed(shape, g.count, q_latent + r * latent_stride,
                                    q_rope_.as<float>() + g.begin * d.n_heads * d.rope_dim,
                                    cache_latent_[cache].as<float>(), cache_rope_[cache].as<float>(),
                                    n_visible_.data() + g.begin, attn + r * latent_stride,
                                    attention_scratch_.as<float>(), pool_);
    }

    // o_h = v_b_h . c^_h   ([v_dim, kv_rank] per head)
    float* heads = attn_heads_.as<float>() + row0 * d.n_heads * d.v_dim;  // [n, heads * v_dim]
    const int64_t heads_stride = d.n_heads * d.v_dim;
    for (int64_t h = 0; h < d.n_heads; ++h) {
        const Matrix w_uv = w.kv_b.rows > 0 ? w.kv_b.row_slice(h * kv_b_head_rows + d.nope, d.v_dim)
                                            : w.v_b.row_slice(h * d.v_dim, d.v_dim);
        cpu::gemm(w_uv, attn + h * d.kv_rank, latent_stride, n, heads + h * d.v_dim, heads_stride, pool_);
    }
}

// Decompressed form (spec §2.7) for one group: the sequence's cache is expanded through kv_b (or
// W_UK from k_b, and v_b) a block of positions at a time into [k_nope | v] per head, and each block is folded
// into the output by the online softmax of cpu::mla_attention_decompressed_block.
void DeepseekForward::attention_decompressed(const LayerWeights& w, int layer, size_t group) {
    const auto& d = layout_;
    const auto& g = groups_[group];
    const size_t cache = size_t(g.sequence) * size_t(d.n_layers) + size_t(layer);
    const cpu::DecompressedAttentionShape shape = decompressed_shape(d);
    const int64_t kv_head = d.nope + d.v_dim, kv_row = d.n_heads * kv_head;
    const int64_t n_positions = n_visible_[size_t(g.begin + g.count - 1)];  // the last token sees them all
    const float* latent = cache_latent_[cache].as<float>();
    float* kv = kv_block_.as<float>();
    float* out = attn_heads_.as<float>() + g.begin * d.n_heads * d.v_dim;
    float* running_max = running_max_.as<float>() + g.begin * d.n_heads;
    float* running_sum = running_sum_.as<float>() + g.begin * d.n_heads;
    cpu::mla_decompressed_begin(shape, g.count, out, running_max, running_sum);
    const float* w_uk = w_uk_.as<float>();  // turned round by attention() for this layer
    for (int64_t first = 0; first < n_positions; first += decompress_block_) {
        const int64_t m = std::min(decompress_block_, n_positions - first);
        const float* c = latent + first * d.kv_rank;
        if (w.kv_b.rows > 0) {
            cpu::gemm(w.kv_b, c, d.kv_rank, m, kv, kv_row, pool_);  // rows per head: [nope | v]
        } else {
            // v_b holds W_UV per head ([v_dim, kv_rank]) as the GEMM wants it.
            for (int64_t h = 0; h < d.n_heads; ++h) {
                const Matrix w_uk_h{DType::F32, d.nope, d.kv_rank, w_uk + h * d.nope * d.kv_rank, nullptr, 0};
                cpu::gemm(w_uk_h, c, d.kv_rank, m, kv + h * kv_head, kv_row, pool_);
                cpu::gemm(w.v_b.row_slice(h * d.v_dim, d.v_dim), c, d.kv_rank, m, kv + h * kv_head + d.nope, kv_row,
                          pool_);
            }
        }
        cpu::mla_attention_decompressed_block(shape, g.count, q_.as<float>() + g.begin * d.n_heads * d.qk_head,
                                              q_rope_.as<float>() + g.begin * d.n_heads * d.rope_dim, kv,
                                              cache_rope_[cache].as<float>() + first * d.rope_dim, first, m,
                                              n_visible_.data() + g.begin, out, running_max, running_sum,
                                              decompressed_scratch_.as<float>(), pool_);
    }
    cpu::mla_decompressed_end(shape, g.count, out, running_sum);
}

// Speculative prefetch (DESIGN: data flow): the residual after layer l's attention is a good
// stand-in for what enters layer l+1's MoE, so layer l+1's router applied to it names the
// experts to start reading while layer l's own experts compute. The router, its bias and the
// norm are resident in the globals (model_plan.hpp), so this works even when l+1's dense segment
// is still on disk; a wrong guess costs a read, never a number.
void DeepseekForward::predict_next_layer_experts(int layer, int64_t n) {
    const auto& d = layout_;
    const int next = layer + 1;
    if (next >= d.n_layers || !d.is_moe_layer(next)) return;
    const LayerWeights* w = &weights_.globals().layers[size_t(next)];
    if (w->router.rows == 0) w = weights_.peek_layer(next);  // a provider without resident routers
    if (!w) return;
    const float* x = x_.as<float>();
    float* guess_in = expert_in_.as<float>();
    for (int64_t t = 0; t < n; ++t) cpu::rms_norm(x + t * d.hidden, w->ffn_norm, d.rms_eps, d.hidden, guess_in + t * d.hidden);
    float* logits = router_logits_.as<float>();
    cpu::gemm(w->router, guess_in, d.hidden, n, logits, d.n_experts, pool_);
    // Its own marks: moe() is still using expert_count_ when it calls this.
    const int k = d.router.top_k;
    std::fill(predicted_mark_.begin(), predicted_mark_.end(), 0);
    for (int64_t t = 0; t < n; ++t) {
        cpu::route(logits + t * d.n_experts, w->router_bias, d.router, &expert_ids_[size_t(t * k)],
                   &expert_weights_[size_t(t * k)]);
        for (int j = 0; j < k; ++j) predicted_mark_[size_t(expert_ids_[size_t(t * k + j)])] = 1;
    }
    predicted_experts_.clear();
    for (int64_t e = 0; e < d.n_experts; ++e)
        if (predicted_mark_[size_t(e)]) predicted_experts_.push_back(int32_t(e));
    weights_.predict_experts(next, predicted_experts_);
}

// out[t] (+)= down . (silu(gate . in[t]) * (up . in[t]))  (spec §2.9)
void DeepseekForward::mlp(const ExpertWeights& w, const float* in, int64_t n, float* out, bool accumulate) {
    const auto& d = layout_;
    const int64_t width = w.gate.rows;
    float* gate = expert_gate_.as<float>();
    float* up = expert_up_.as<float>();
    cpu::gemm(w.gate, in, d.hidden, n, gate, width, pool_);
    cpu::gemm(w.up, in, d.hidden, n, up, width, pool_);
    cpu::silu_mul(gate, up, n * width, gate);
    if (!accumulate) {
        cpu::gemm(w.down, gate, width, n, out, d.hidden, pool_);
        return;
    }
    float* down = expert_out_.as<float>();
    cpu::gemm(w.down, gate, width, n, down, d.hidden, pool_);
    for (int64_t t = 0; t < n; ++t) {
        float* o = out + t * d.hidden;
        const float* r = down + t * d.hidden;
        for (int64_t i = 0; i < d.hidden; ++i) o[i] += r[i];
    }
}

// MoE (spec §2.10, §2.11). Input: normed_ [n, hidden]. Output: branch_out_ [n, hidden].
void DeepseekForward::moe(const LayerWeights& w, int layer, int64_t n) {
    const auto& d = layout_;
    const float* a = normed_.as<float>();
    float* out = branch_out_.as<float>();
    const int k = d.router.top_k;

    // Route every token: fp32 router logits, then top-k selection and weights.
    float* logits = router_logits_.as<float>();
    cpu::gemm(w.router, a, d.hidden, n, logits, d.n_experts, pool_);
    for (int64_t t = 0; t < n; ++t)
        cpu::route(logits + t * d.n_experts, w.router_bias, d.router, &expert_ids_[size_t(t * k)],
                   &expert_weights_[size_t(t * k)]);

    // Group the (token, weight) pairs by expert (ascending ids) so each expert is read once.
    std::fill(expert_count_.begin(), expert_count_.end(), 0);
    for (int64_t i = 0; i < n * k; ++i) ++expert_count_[size_t(expert_ids_[size_t(i)])];
    expert_begin_[0] = 0;
    needed_experts_.clear();
    for (int64_t e = 0; e < d.n_experts; ++e) {
        expert_begin_[size_t(e + 1)] = expert_begin_[size_t(e)] + expert_count_[size_t(e)];
        if (expert_count_[size_t(e)] > 0) needed_experts_.push_back(int32_t(e));
    }
    std::fill(expert_count_.begin(), expert_count_.end(), 0);
    for (int64_t t = 0; t < n; ++t)
        for (int j = 0; j < k; ++j) {
            const int e = expert_ids_[size_t(t * k + j)];
            const int32_t slot = expert_begin_[size_t(e)] + expert_count_[size_t(e)]++;
            routed_token_[size_t(slot)] = int32_t(t);
            routed_weight_[size_t(slot)] = expert_weights_[size_t(t * k + j)];
        }
    weights_.need_experts(layer, needed_experts_);
    // Guess the next layer's experts now, so their reads follow this layer's in the queue.
    if (weights_.wants_predictions()) predict_next_layer_experts(layer, n);

    // Each expert runs on its tokens as soon as its weights are in memory; its outputs land
    // in its own rows of expert_out_ (slot order).
    float* gathered = expert_in_.as<float>();
    float* expert_out = expert_out_.as<float>();
    const ExpertWeights* ex = nullptr;
    for (int32_t e; (e = weights_.next_expert(layer, &ex)) >= 0;) {
        const int32_t begin = expert_begin_[size_t(e)], count = expert_count_[size_t(e)];
        for (int32_t i = 0; i < count; ++i)
            std::memcpy(gathered + int64_t(i) * d.hidden, a + int64_t(routed_token_[size_t(begin + i)]) * d.hidden,
                        size_t(d.hidden) * sizeof(float));
        float* gate = expert_gate_.as<float>();
        float* up = expert_up_.as<float>();
        const int64_t width = ex->gate.rows;
        cpu::gemm(ex->gate, gathered, d.hidden, count, gate, width, pool_);
        cpu::gemm(ex->up, gathered, d.hidden, count, up, width, pool_);
        cpu::silu_mul(gate, up, int64_t(count) * width, gate);
        cpu::gemm(ex->down, gate, width, count, expert_out + int64_t(begin) * d.hidden, d.hidden, pool_);
    }

    // Combine in slot order (experts ascending): the same sum whatever the arrival order.
    std::fill(out, out + n * d.hidden, 0.0f);
    for (int64_t s = 0; s < n * k; ++s) {
        const float weight = routed_weight_[size_t(s)];
        float* o = out + int64_t(routed_token_[size_t(s)]) * d.hidden;
        const float* r = expert_out + s * d.hidden;
        for (int64_t c = 0; c < d.hidden; ++c) o[c] += weight * r[c];
    }
    // Shared experts see every token with weight 1.
    if (d.n_shared > 0) mlp(w.shared, a, n, out, true);
}

}  // namespace sluice
