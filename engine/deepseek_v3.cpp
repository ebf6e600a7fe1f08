#include "engine/deepseek_v3.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "engine/cpu_backend.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/quant_dot.hpp"

namespace sluice {

namespace {
int64_t max_of(std::initializer_list<int64_t> v) { return *std::max_element(v.begin(), v.end()); }
}  // namespace

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

ForwardShape DeepseekForward::shape_of(const ForwardOptions& o) {
    return {o.shape.step_tokens, o.shape.positions, o.shape.n_sequences,
            std::min(o.shape.positions, o.decompress_block > 0 ? o.decompress_block : kDecompressBlockPositions),
            std::min(o.shape.step_tokens, o.absorbed_piece > 0 ? o.absorbed_piece : kAbsorbedPieceTokens)};
}

int64_t DeepseekForward::host_bytes() const {
    auto bytes = [](const auto& v) { return int64_t(v.capacity() * sizeof(v[0])); };
    return bytes(expert_ids_) + bytes(expert_weights_) + bytes(expert_count_) + bytes(expert_begin_) +
           bytes(routed_token_) + bytes(routed_weight_) + bytes(token_slots_) + bytes(token_fill_) +
           bytes(needed_experts_) + bytes(predicted_experts_) + bytes(predicted_mark_) + bytes(n_visible_) +
           bytes(positions_) + bytes(step_tokens_) + bytes(groups_) + bytes(logit_rows_) + bytes(n_past_) +
           bytes(cache_uses_);
}

namespace {
// A provider for a forward that is only counted, never run.
class NoWeights final : public WeightProvider {
public:
    const ModelWeights& globals() override { fail(ErrorKind::internal, "a counted forward pass has no weights"); }
    const LayerWeights& begin_layer(int) override { return globals().layers.front(); }
    void need_experts(int, std::span<const int32_t>) override {}
    int32_t next_expert(int, const ExpertWeights**) override { return -1; }
    void end_layer(int) override {}
};
}  // namespace

DeepseekForward::Bytes DeepseekForward::bytes_for(const ModelLayout& d, const ForwardOptions& o, int n_threads) {
    CpuBackend counter(n_threads);  // counts what it would allocate
    NoWeights none;
    Bytes b;
    {
        DeepseekForward f(d, none, o, counter);
        b.activations = uint64_t(counter.allocated_bytes() - counter.cache_bytes() + f.host_bytes());
        b.mla_cache = uint64_t(counter.cache_bytes());
    }
    const ForwardShape s = shape_of(o);
    // The kernels' buffers grow apart: the caller's activations to the largest of its calls (the
    // widest matrix's, the expansion's, the grouped absorb's), each thread's to the widest matrix.
    const int64_t widest = CpuBackend::widest_matrix_cols(d);
    const uint64_t widest_activations = cpu::quant_gemm_scratch_bytes(s.max_batch_tokens, widest);
    const uint64_t activations =
        std::max({widest_activations, cpu::quant_gemm_scratch_bytes(s.decompress_block, d.kv_rank),
                  cpu::quant_gemm_grouped_scratch_bytes(std::min(s.max_batch_tokens, s.absorbed_piece), d.n_heads,
                                                        std::max(d.nope, d.kv_rank))});
    b.kernel_scratch = cpu::gemm_scratch_bytes(s.max_batch_tokens, widest, n_threads) - widest_activations + activations;
    return b;
}

int64_t DeepseekForward::activation_floats(const ModelLayout& d, const ForwardShape& s) {
    const int64_t n = s.max_batch_tokens;
    const int64_t k = std::max(d.router.top_k, 1);
    const int64_t widest = max_of({d.dense_inter, d.moe_inter, d.n_shared * d.moe_inter, 1});
    const int64_t block = std::min(s.max_context, s.decompress_block);
    // Index arrays (int64 positions and visible counts; int32 slots, tokens and rows) in floats.
    const int64_t indices = 2 * 2 * n + 3 * n * k + n;
    return n * d.hidden * 4                                 // x, normed, branch_out, expert_in
           + n * std::max<int64_t>(d.q_lora, 1) + n * d.n_heads * d.qk_head + n * d.cache_width() +
           2 * std::min(n, s.absorbed_piece) * d.n_heads * d.kv_rank + n * d.n_heads * d.rope_dim + n * d.n_heads * d.v_dim +
           n * std::max<int64_t>(d.n_experts, 1) + 2 * n * widest + n * k * d.hidden +
           block * d.n_heads * (d.nope + d.v_dim) + 2 * n * d.n_heads + std::max<int64_t>(d.rope_dim / 2, 1) +
           indices;
}

DeepseekForward::DeepseekForward(const ModelLayout& layout, WeightProvider& weights, ForwardOptions options,
                                 ThreadPool& pool)
    : layout_(layout), weights_(weights), options_(options), shape_(shape_of(options)),
      owned_backend_(std::make_unique<CpuBackend>(pool)), backend_(*owned_backend_) {
    allocate();
}

DeepseekForward::DeepseekForward(const ModelLayout& layout, WeightProvider& weights, ForwardOptions options,
                                 Backend& backend)
    : layout_(layout), weights_(weights), options_(options), shape_(shape_of(options)), backend_(backend),
      backend_mark_(backend.allocation_mark()) {
    try {
        allocate();
    } catch (...) {
        // A shared backend outlives this failure (the next pass, or the weights, use it): what
        // was allocated before the refusal goes back now, not when the backend goes.
        backend_.release_to(backend_mark_);
        throw;
    }
}

DeepseekForward::~DeepseekForward() {
    // A shared backend (a device holding the weights too) gets back this pass's buffers.
    if (!owned_backend_) backend_.release_to(backend_mark_);
}

void DeepseekForward::allocate() {
    const auto& d = layout_;
    const int64_t n = shape_.max_batch_tokens;
    if (n <= 0 || shape_.max_context <= 0) fail(ErrorKind::invalid_input, "step tokens and positions must be positive");
    if (shape_.n_sequences < 1) fail(ErrorKind::invalid_input, "at least one sequence is needed");
    Backend& be = backend_;
    backend_mark_ = be.allocation_mark();
    be.reserve(d, shape_);
    x_ = be.alloc_floats(n * d.hidden);
    normed_ = be.alloc_floats(n * d.hidden);
    q_compressed_ = be.alloc_floats(n * std::max<int64_t>(d.q_lora, 1));
    q_ = be.alloc_floats(n * d.n_heads * d.qk_head);
    kv_compressed_ = be.alloc_floats(n * d.cache_width());
    q_latent_ = be.alloc_floats(shape_.absorbed_piece * d.n_heads * d.kv_rank);
    q_rope_ = be.alloc_floats(n * d.n_heads * d.rope_dim);
    attn_latent_ = be.alloc_floats(shape_.absorbed_piece * d.n_heads * d.kv_rank);
    attn_heads_ = be.alloc_floats(n * d.n_heads * d.v_dim);
    branch_out_ = be.alloc_floats(n * d.hidden);
    router_logits_ = be.alloc_floats(n * std::max<int64_t>(d.n_experts, 1));
    const int64_t widest = max_of({d.dense_inter, d.moe_inter, d.n_shared * d.moe_inter, 1});
    expert_in_ = be.alloc_floats(n * d.hidden);
    expert_gate_ = be.alloc_floats(n * widest);
    expert_up_ = be.alloc_floats(n * widest);
    // Routed expert outputs are kept per (token, expert) pair and summed in a fixed order, so
    // the result does not depend on the order in which experts arrive from disk.
    const int k = std::max(d.router.top_k, 1);
    expert_out_ = be.alloc_floats(n * k * d.hidden);
    const int64_t block = shape_.decompress_block;
    kv_block_ = be.alloc_floats(block * d.n_heads * (d.nope + d.v_dim));
    running_max_ = be.alloc_floats(n * d.n_heads);
    running_sum_ = be.alloc_floats(n * d.n_heads);
    const auto freq = cpu::yarn_frequencies(d.rope);
    rope_freq_ = be.alloc_floats(std::max<int64_t>(int64_t(freq.size()), 1));
    be.upload(rope_freq_, freq.data(), freq.size() * sizeof(float));
    step_positions_ = be.alloc_int64(n);
    step_visible_ = be.alloc_int64(n);
    routed_token_dev_ = be.alloc_int32(n * k);
    token_slots_dev_ = be.alloc_int32(n * k);
    slot_weight_dev_ = be.alloc_floats(n * k);
    logit_rows_dev_ = be.alloc_int32(n);

    expert_ids_.resize(size_t(n * k));
    expert_weights_.resize(size_t(n * k));
    expert_count_.resize(size_t(std::max<int64_t>(d.n_experts, 1)));
    predicted_mark_.resize(size_t(d.n_experts));
    needed_experts_.reserve(size_t(d.n_experts));
    predicted_experts_.reserve(size_t(d.n_experts));
    expert_begin_.resize(size_t(d.n_experts + 1));
    routed_token_.resize(size_t(n * k));
    routed_weight_.resize(size_t(n * k));
    token_slots_.resize(size_t(n * k));
    token_fill_.resize(size_t(n));
    n_visible_.resize(size_t(n));
    positions_.resize(size_t(n));
    step_tokens_.resize(size_t(n));
    groups_.reserve(size_t(n));
    logit_rows_.reserve(size_t(n));
    cache_uses_.reserve(size_t(n));
    n_past_.assign(size_t(shape_.n_sequences), 0);
    cache_ = options_.latent_cache;
    if (!cache_) {
        owned_cache_ = std::make_unique<ResidentLatentCache>(d, shape_.n_sequences, shape_.max_context, be);
        cache_ = owned_cache_.get();
    }
    if (cache_->capacity() < shape_.max_context)
        fail(ErrorKind::invalid_input, "the latent cache holds {} positions per sequence, the forward was asked for {}",
             cache_->capacity(), shape_.max_context);
}

void DeepseekForward::truncate(int64_t n, int sequence) {
    if (sequence < 0 || sequence >= shape_.n_sequences)
        fail(ErrorKind::internal, "sequence {} of {}", sequence, shape_.n_sequences);
    if (n < 0 || n > n_past_[size_t(sequence)])
        fail(ErrorKind::internal, "truncate to {} with {} positions cached", n, n_past_[size_t(sequence)]);
    n_past_[size_t(sequence)] = n;
}

void DeepseekForward::forward(std::span<const int32_t> tokens, bool all_logits, float* logits) {
    const int64_t n = int64_t(tokens.size());
    for (int64_t begin = 0; begin < n; begin += shape_.max_batch_tokens) {
        const int64_t count = std::min(shape_.max_batch_tokens, n - begin);
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
        if (entry.sequence < 0 || entry.sequence >= shape_.n_sequences)
            fail(ErrorKind::invalid_input, "sequence {} is outside [0, {})", entry.sequence, shape_.n_sequences);
        const int64_t past = n_past_[size_t(entry.sequence)];
        if (past + count > shape_.max_context)
            fail(ErrorKind::invalid_input, "context full: {} cached + {} new positions exceed the context of {}", past,
                 count, shape_.max_context);
        if (n + count > shape_.max_batch_tokens)
            fail(ErrorKind::invalid_input, "a step of more than {} tokens", shape_.max_batch_tokens);
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
            positions_[size_t(n + i)] = past + i;
            n_visible_[size_t(n + i)] = past + i + 1;  // causal: itself and everything before
            if (!entry.no_logits && (entry.all_logits || i == count - 1)) logit_rows_.push_back(int32_t(n + i));
        }
        n += count;
    }
    if (n == 0) return;
    cache_uses_.clear();
    for (const auto& g : groups_)
        cache_uses_.push_back({g.sequence, positions_[size_t(g.begin)], positions_[size_t(g.begin)] + g.count});
    cache_->begin_step(cache_uses_);
    run_step(n, logits);
    cache_->end_step();
    for (const auto& g : groups_) n_past_[size_t(g.sequence)] += g.count;
}

void DeepseekForward::run_step(int64_t n, float* logits) {
    const auto& d = layout_;
    Backend& be = backend_;
    float* x = x_;
    float* normed = normed_;
    float* branch = branch_out_;

    weights_.begin_step(n);
    be.upload(step_positions_, positions_.data(), size_t(n) * sizeof(int64_t));
    be.upload(step_visible_, n_visible_.data(), size_t(n) * sizeof(int64_t));
    // x: [n, hidden] = Embed[tokens]
    const ModelWeights& globals = weights_.globals();
    be.begin_span("embed", -1, -1);
    be.embed(globals.embed, step_tokens_.data(), n, x);
    be.end_span();

    for (int l = 0; l < d.n_layers; ++l) {
        const LayerWeights& w = weights_.begin_layer(l);
        // x = x + MLA(RMSNorm(x))
        be.begin_span("attention", l, -1);
        be.rms_norm(x, d.hidden, w.attn_norm, d.rms_eps, n, d.hidden, normed, d.hidden);
        attention(w, l, n);
        be.add(x, branch, n * d.hidden);
        be.end_span();
        // A MoE layer predicts after its own router has asked for its experts (in moe()), so its
        // reads queue ahead of the guesses for the next layer; a dense layer predicts here.
        if (!w.is_moe && weights_.wants_predictions()) predict_next_layer_experts(l, n);
        // x = x + MLP/MoE(RMSNorm(x))
        if (w.is_moe) {
            moe(w, l, n);
        } else {
            be.begin_span("mlp", l, -1);
            be.rms_norm(x, d.hidden, w.ffn_norm, d.rms_eps, n, d.hidden, normed, d.hidden);
            mlp(w.dense, normed, n, branch, false);
            be.end_span();
        }
        be.add(x, branch, n * d.hidden);
        weights_.end_layer(l);
    }

    if (logits && !logit_rows_.empty()) {
        // logits = lm_head . RMSNorm(x) for the rows asked for, in fp32.
        const int64_t rows = int64_t(logit_rows_.size());
        be.begin_span("head", -1, -1);
        be.upload(logit_rows_dev_, logit_rows_.data(), size_t(rows) * sizeof(int32_t));
        be.gather_rows(x, d.hidden, logit_rows_dev_, rows, normed);
        be.rms_norm(normed, d.hidden, globals.final_norm, d.rms_eps, rows, d.hidden, normed, d.hidden);
        be.end_span();  // the logits come back to the host in output_logits: outside the span
        be.output_logits(globals.lm_head, normed, rows, logits);
    }
    be.synchronize();
    weights_.end_step();
}

// MLA (spec §2.4, §2.7, §2.8). Input: normed_ [n, hidden]. Output: branch_out_ [n, hidden].
void DeepseekForward::attention(const LayerWeights& w, int layer, int64_t n) {
    const auto& d = layout_;
    Backend& be = backend_;
    const float* a = normed_;
    float* q = q_;                      // [n, heads, qk_head] = [nope | rope] per head
    float* ckv = kv_compressed_;        // [n, kv_rank + rope]
    const int64_t q_stride = d.n_heads * d.qk_head;
    const int64_t cw = d.cache_width();

    if (d.q_lora > 0) {
        float* cq = q_compressed_;      // [n, q_lora]
        be.linear(w.q_a, a, d.hidden, n, cq, d.q_lora);
        be.rms_norm(cq, d.q_lora, w.q_a_norm, d.latent_norm_eps, n, d.q_lora, cq, d.q_lora);
        be.linear(w.q_b, cq, d.q_lora, n, q, q_stride);
    } else {
        be.linear(w.q, a, d.hidden, n, q, q_stride);
    }
    be.linear(w.kv_a, a, d.hidden, n, ckv, cw);

    // q_rope: [n, heads, rope] = the rope part of each head's query, rotated.
    be.copy_rows(q + d.nope, d.qk_head, n * d.n_heads, d.rope_dim, q_rope_, d.rope_dim);
    be.rope(q_rope_, n, int(d.n_heads), d.n_heads * d.rope_dim, d.rope_dim, int(d.rope_dim), step_positions_,
            rope_freq_, d.rope_magnitude);

    const bool any_decompressed = std::any_of(groups_.begin(), groups_.end(), [&](const auto& g) {
        return use_decompressed(g.count, positions_[size_t(g.begin)]);
    });
    be.begin_latent_products(w, layer, any_decompressed);
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
    be.linear(w.o, attn_heads_, d.n_heads * d.v_dim, n, branch_out_, d.hidden);
}

// The cache of group `group`'s sequence at `layer`, once its new positions are in: the normalised
// latent and the roped key of each (from kv_compressed_ [n, kv_rank + rope]). Each group is taken
// just before its attention, so a cache that streams from disk holds only the groups in flight.
LatentCacheEntry DeepseekForward::open_cache(const LayerWeights& w, int layer, size_t group) {
    const auto& d = layout_;
    Backend& be = backend_;
    const auto& g = groups_[group];
    const LatentCacheEntry cache = cache_->acquire(layer, g.sequence);
    const int64_t past = positions_[size_t(g.begin)];
    const float* rows = kv_compressed_ + g.begin * d.cache_width();
    be.rms_norm(rows, d.cache_width(), w.kv_a_norm, d.latent_norm_eps, g.count, d.kv_rank,
                cache.latent + past * d.kv_rank, d.kv_rank);
    float* k_pe = cache.rope + past * d.rope_dim;
    be.copy_rows(rows + d.kv_rank, d.cache_width(), g.count, d.rope_dim, k_pe, d.rope_dim);
    be.rope(k_pe, g.count, 1, d.rope_dim, d.rope_dim, int(d.rope_dim), step_positions_ + g.begin, rope_freq_,
            d.rope_magnitude);
    return cache;
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

// Absorbed form (spec §2.8) for groups [first_group, end_group), whose tokens are contiguous, at
// most absorbed_piece tokens at a time: whole groups while they fit, a longer group in pieces of
// its own tokens (its cache opened once for them all). A token's result depends on its own query
// and cache only, so pieces change no number; they bound q_latent_ and attn_latent_, [rows, heads,
// kv_rank] floats each, 268 MB apiece at 1,024 tokens a step on V3 when sized for the whole step
// (that memory now goes to the expert pool: more of the next layer read during attention).
void DeepseekForward::attention_absorbed(const LayerWeights& w, int layer, size_t first_group, size_t end_group) {
    for (size_t g = first_group; g < end_group;) {
        size_t end = g;
        int64_t rows = 0;
        while (end < end_group && rows + groups_[end].count <= shape_.absorbed_piece) rows += groups_[end++].count;
        if (end == g) {  // one group longer than a piece
            const LatentCacheEntry cache = open_cache(w, layer, g);
            const int64_t piece = shape_.absorbed_piece;
            for (int64_t first = 0; first < groups_[g].count; first += piece) {
                const int64_t row = groups_[g].begin + first, count = std::min(piece, groups_[g].count - first);
                absorb_rows(w, row, count);
                attend_absorbed(row, count, 0, cache);
                unabsorb_rows(w, row, count);
            }
            cache_->release(layer, groups_[g].sequence);
            ++end;
        } else {
            const int64_t row0 = groups_[g].begin;
            absorb_rows(w, row0, rows);
            for (size_t i = g; i < end; ++i) {
                const auto& gi = groups_[i];
                const LatentCacheEntry cache = open_cache(w, layer, i);
                attend_absorbed(gi.begin, gi.count, gi.begin - row0, cache);
                cache_->release(layer, gi.sequence);
            }
            unabsorb_rows(w, row0, rows);
        }
        g = end;
    }
}

// q~_h = W_UK_h^T . q_nope_h for rows [row0, row0 + count): [count, heads, kv_rank] at q_latent_.
void DeepseekForward::absorb_rows(const LayerWeights& w, int64_t row0, int64_t count) {
    backend_.absorb_queries(w, q_ + row0 * layout_.n_heads * layout_.qk_head, count, q_latent_);
}

// sum_t P * c_t for `count` tokens from step row `row` over their sequence's cache, at piece row `piece_row`.
void DeepseekForward::attend_absorbed(int64_t row, int64_t count, int64_t piece_row, const LatentCacheEntry& cache) {
    const auto& d = layout_;
    const int64_t latent_stride = d.n_heads * d.kv_rank;
    backend_.attention_absorbed(count, q_latent_ + piece_row * latent_stride, q_rope_ + row * d.n_heads * d.rope_dim,
                                cache.latent, cache.rope, step_visible_ + row, attn_latent_ + piece_row * latent_stride);
}

// o_h = W_UV_h . c^_h: [count, heads * v_dim] into attn_heads_ at rows [row0, row0 + count).
void DeepseekForward::unabsorb_rows(const LayerWeights& w, int64_t row0, int64_t count) {
    backend_.unabsorb(w, attn_latent_, count, attn_heads_ + row0 * layout_.n_heads * layout_.v_dim);
}

// Decompressed form (spec §2.7) for one group: the sequence's cache is expanded through kv_b (or
// W_UK from k_b, and v_b) a block of positions at a time into [k_nope | v] per head, and each block
// is folded into the output by an online softmax.
void DeepseekForward::attention_decompressed(const LayerWeights& w, int layer, size_t group) {
    const auto& d = layout_;
    Backend& be = backend_;
    const auto& g = groups_[group];
    const LatentCacheEntry cache = open_cache(w, layer, group);
    const int64_t n_positions = n_visible_[size_t(g.begin + g.count - 1)];  // the last token sees them all
    const int64_t block = shape_.decompress_block;
    float* out = attn_heads_ + g.begin * d.n_heads * d.v_dim;
    float* running_max = running_max_ + g.begin * d.n_heads;
    float* running_sum = running_sum_ + g.begin * d.n_heads;
    be.decompressed_begin(g.count, out, running_max, running_sum);
    for (int64_t first = 0; first < n_positions; first += block) {
        const int64_t m = std::min(block, n_positions - first);
        be.expand_latents(w, cache.latent + first * d.kv_rank, m, kv_block_);
        be.decompressed_block(g.count, q_ + g.begin * d.n_heads * d.qk_head, q_rope_ + g.begin * d.n_heads * d.rope_dim,
                              kv_block_, cache.rope + first * d.rope_dim, first, m, step_visible_ + g.begin, out,
                              running_max, running_sum);
    }
    be.decompressed_end(g.count, out, running_sum);
    cache_->release(layer, g.sequence);
}

// Speculative prefetch (DESIGN: data flow): the residual after layer l's attention is a good
// stand-in for what enters layer l+1's MoE, so layer l+1's router applied to it names the
// experts to start reading while layer l's own experts compute. The router, its bias and the
// norm are resident in the globals (model_plan.hpp), so this works even when l+1's dense segment
// is still on disk; a wrong guess costs a read, never a number.
void DeepseekForward::predict_next_layer_experts(int layer, int64_t n) {
    const auto& d = layout_;
    Backend& be = backend_;
    const int next = layer + 1;
    if (next >= d.n_layers || !d.is_moe_layer(next)) return;
    const LayerWeights* w = &weights_.globals().layers[size_t(next)];
    if (w->router.rows == 0) w = weights_.peek_layer(next);  // a provider without resident routers
    if (!w) return;
    float* guess_in = expert_in_;
    be.rms_norm(x_, d.hidden, w->ffn_norm, d.rms_eps, n, d.hidden, guess_in, d.hidden);
    be.linear(w->router, guess_in, d.hidden, n, router_logits_, d.n_experts);
    // Its own marks and ids: moe() is still using expert_count_ when it calls this.
    const int k = d.router.top_k;
    be.route(router_logits_, w->router_bias, d.router, n, expert_ids_.data(), expert_weights_.data());
    std::fill(predicted_mark_.begin(), predicted_mark_.end(), 0);
    for (int64_t i = 0; i < n * k; ++i) predicted_mark_[size_t(expert_ids_[size_t(i)])] = 1;
    predicted_experts_.clear();
    for (int64_t e = 0; e < d.n_experts; ++e)
        if (predicted_mark_[size_t(e)]) predicted_experts_.push_back(int32_t(e));
    weights_.predict_experts(next, predicted_experts_);
}

// out[t] (+)= down . (silu(gate . in[t]) * (up . in[t]))  (spec §2.9)
void DeepseekForward::mlp(const ExpertWeights& w, const float* in, int64_t n, float* out, bool accumulate) {
    const auto& d = layout_;
    Backend& be = backend_;
    const int64_t width = w.gate.rows;
    be.linear(w.gate, in, d.hidden, n, expert_gate_, width);
    be.linear(w.up, in, d.hidden, n, expert_up_, width);
    be.silu_mul(expert_gate_, expert_up_, n * width);
    if (!accumulate) {
        be.linear(w.down, expert_gate_, width, n, out, d.hidden);
        return;
    }
    // The routed outputs are combined by now: their rows are free for the shared expert's.
    be.linear(w.down, expert_gate_, width, n, expert_out_, d.hidden);
    be.add(out, expert_out_, n * d.hidden);
}

// MoE (spec §2.10, §2.11). Input: normed_ [n, hidden]. Output: branch_out_ [n, hidden].
void DeepseekForward::moe(const LayerWeights& w, int layer, int64_t n) {
    const auto& d = layout_;
    Backend& be = backend_;
    const int k = d.router.top_k;

    // Route every token: fp32 router logits, then top-k selection and weights (on the host).
    be.begin_span("router", layer, -1);
    be.rms_norm(x_, d.hidden, w.ffn_norm, d.rms_eps, n, d.hidden, normed_, d.hidden);
    be.linear(w.router, normed_, d.hidden, n, router_logits_, d.n_experts);
    be.end_span();
    be.route(router_logits_, w.router_bias, d.router, n, expert_ids_.data(), expert_weights_.data());

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
    // Each token's slots in ascending order: the combine sums them in that fixed order.
    std::fill(token_fill_.begin(), token_fill_.begin() + n, 0);
    for (int64_t s = 0; s < n * k; ++s) {
        const int32_t t = routed_token_[size_t(s)];
        token_slots_[size_t(t * k + token_fill_[size_t(t)]++)] = int32_t(s);
    }
    be.upload(routed_token_dev_, routed_token_.data(), size_t(n * k) * sizeof(int32_t));
    be.upload(token_slots_dev_, token_slots_.data(), size_t(n * k) * sizeof(int32_t));
    be.upload(slot_weight_dev_, routed_weight_.data(), size_t(n * k) * sizeof(float));
    weights_.need_experts(layer, needed_experts_);
    // Guess the next layer's experts now, so their reads follow this layer's in the queue.
    if (weights_.wants_predictions()) predict_next_layer_experts(layer, n);

    // Each expert runs on its tokens as soon as its weights are in memory; its outputs land
    // in its own rows of expert_out_ (slot order).
    const ExpertWeights* ex = nullptr;
    for (int32_t e; (e = weights_.next_expert(layer, &ex)) >= 0;) {
        const int32_t begin = expert_begin_[size_t(e)], count = expert_count_[size_t(e)];
        be.begin_span("expert", layer, e);
        be.gather_rows(normed_, d.hidden, routed_token_dev_ + begin, count, expert_in_);
        const int64_t width = ex->gate.rows;
        be.linear(ex->gate, expert_in_, d.hidden, count, expert_gate_, width);
        be.linear(ex->up, expert_in_, d.hidden, count, expert_up_, width);
        be.silu_mul(expert_gate_, expert_up_, int64_t(count) * width);
        be.linear(ex->down, expert_gate_, width, count, expert_out_ + int64_t(begin) * d.hidden, d.hidden);
        be.end_span();
    }

    // Combine in slot order (experts ascending): the same sum whatever the arrival order.
    be.begin_span("combine", layer, -1);
    be.combine_slots(expert_out_, token_slots_dev_, slot_weight_dev_, n, k, d.hidden, branch_out_);
    // Shared experts see every token with weight 1.
    if (d.n_shared > 0) mlp(w.shared, normed_, n, branch_out_, true);
    be.end_span();
}

}  // namespace sluice
