// The DeepSeek-V3 forward pass (spec §2), readable top to bottom: embedding, then per layer
// RMSNorm -> MLA (absorbed or decompressed form over the latent cache) -> RMSNorm -> dense MLP or
// MoE, then the final norm and the output head. Written once: the arithmetic runs on a Backend
// (engine/backend.hpp: the CPU, or a CUDA device real or emulated). Scheduling, streaming and
// caching of weights live elsewhere; this file only asks for a layer's weights.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.hpp"
#include "engine/backend.hpp"
#include "engine/latent_cache.hpp"
#include "engine/model_layout.hpp"
#include "engine/model_weights.hpp"
#include "engine/weight_provider.hpp"
#include "kernels/cpu/ops.hpp"

namespace sluice {

// The two forms of MLA (spec §2.7, §2.8): the same numbers up to rounding; which is faster depends
// on how many queries share the positions. automatic picks per sequence and step.
enum class AttentionForm { automatic, absorbed, decompressed };
AttentionForm parse_attention_form(const std::string& text);  // "auto" | "absorbed" | "decompressed"
const char* attention_form_name(AttentionForm form);

// What a forward pass is sized for. The memory planner plans from it and DeepseekForward allocates
// from it, through the same allocation calls (DeepseekForward::bytes_for runs them against a
// counting backend), so the plan is the allocation. A scheduler holding up to N sequences of up to
// C positions, running up to T tokens per step, plans and runs RunShape{N, C, T}; a program that
// runs several forwards one after another (bench) plans each of their shapes, and the planner
// holds the largest.
struct RunShape {
    int n_sequences = 1;         // sequences held at once, each with its own latent cache
    int64_t positions = 4096;    // most positions one sequence's latent cache holds
    int64_t step_tokens = 128;   // most tokens in one step, over all its sequences (prefill is split into steps)
    int64_t logit_rows = 0;      // rows of [rows, vocab] f32 logits the caller holds; 0: one per sequence

    int64_t logits_held() const { return logit_rows > 0 ? logit_rows : n_sequences; }
};

struct ForwardOptions {
    RunShape shape;
    AttentionForm attention = AttentionForm::automatic;
    int64_t decompress_block = 0;     // positions the decompressed form expands at a time; 0: default
    int64_t absorbed_piece = 0;       // tokens the absorbed form takes at a time; 0: default
    // Where the latent cache lives (engine/latent_cache.hpp), at least n_sequences x max_context;
    // null: resident in backend memory, owned by the forward.
    LatentCache* latent_cache = nullptr;
};

// One sequence's part of a batched step: its next tokens, and whether logits are wanted for
// all of them, only the last, or none (a prompt chunk with more of the prompt to come: the head
// is a large product per row).
struct SequenceTokens {
    int sequence = 0;
    std::span<const int32_t> tokens;
    bool all_logits = false;
    bool no_logits = false;
};

class DeepseekForward {
public:
    // Cache positions the decompressed form of attention expands at a time by default (V3: 256 x
    // 128 heads x 256 floats = 32 MiB); larger blocks only save per-block overhead.
    static constexpr int64_t kDecompressBlockPositions = 256;
    // Tokens the absorbed form takes at a time by default (q_latent_ and attn_latent_ hold this many
    // rows: 2 x 128 x 128 heads x 512 floats = 64 MiB on V3).
    static constexpr int64_t kAbsorbedPieceTokens = 128;
    // The sizes the buffers follow from (decompress_block and absorbed_piece resolved to their defaults).
    static ForwardShape shape_of(const ForwardOptions& options);
    // Floats of activations this object asks its backend for (the latent cache and the backend's
    // own scratch come on top): the CUDA backend's planner figure (engine/cuda/cuda_backend_sizes).
    static int64_t activation_floats(const ModelLayout& layout, const ForwardShape& shape);

    // The bytes a forward with these options holds on the CPU backend with n_threads threads, and
    // the matmul scratch it reserves on them: the memory planner's figures. Counted by running
    // this class's own allocation against a CPU backend that counts instead of allocating.
    struct Bytes {
        uint64_t mla_cache = 0;      // latent cache, all sequences and layers
        uint64_t activations = 0;    // step buffers, the backend's scratch and the routing bookkeeping
        uint64_t kernel_scratch = 0; // per-thread matmul scratch: kept by the threads after the forward, grown only
    };
    static Bytes bytes_for(const ModelLayout& layout, const ForwardOptions& options, int n_threads);

    // On the CPU backend, threaded on `pool`.
    DeepseekForward(const ModelLayout& layout, WeightProvider& weights, ForwardOptions options, ThreadPool& pool);
    // On any backend; `weights` must hand out views the backend can use (host views for the CPU,
    // device views for a device backend: engine/device_weights).
    DeepseekForward(const ModelLayout& layout, WeightProvider& weights, ForwardOptions options, Backend& backend);
    ~DeepseekForward();

    // Runs `tokens` at the next positions of sequence 0, appending to its latent cache.
    // Writes logits [tokens.size(), vocab] when all_logits, else [1, vocab] for the last token.
    void forward(std::span<const int32_t> tokens, bool all_logits, float* logits);

    // One step over several sequences (at most shape().step_tokens tokens in all): every
    // sequence's tokens share the weights read for the step. Logits rows are written in batch
    // order: all positions of entries with all_logits, none of those with no_logits, the last
    // position of the others.
    void forward_batch(std::span<const SequenceTokens> batch, float* logits);

    int64_t position(int sequence = 0) const { return n_past_[size_t(sequence)]; }
    // Passed to the weights: about how many tokens the caller's next forward step will carry.
    void expect_next_step(int64_t n_tokens) { weights_.expect_next_step(n_tokens); }
    const RunShape& shape() const { return options_.shape; }
    // Forgets positions >= n (n <= position()): a restart, or a rejected draft.
    void truncate(int64_t n, int sequence = 0);

    const ModelLayout& layout() const { return layout_; }
    const ForwardOptions& options() const { return options_; }
    Backend& backend() { return backend_; }
    // Bytes allocated for activations, the latent cache and the backend's scratch (and, on a device
    // backend shared with the weights, those too), plus the host-side routing bookkeeping.
    int64_t allocated_bytes() const { return backend_.allocated_bytes() + host_bytes(); }
    // The host vectors of a step's bookkeeping (routing, positions, groups), as allocated.
    int64_t host_bytes() const;

private:
    void allocate();
    void run_step(int64_t n, float* logits);
    void attention(const LayerWeights& w, int layer, int64_t n);
    // The attention of one sequence's tokens (a group of the step) in the two forms of MLA, writing
    // attn_heads_ rows [begin, begin + count); the absorbed form takes a run of groups at once.
    void attention_absorbed(const LayerWeights& w, int layer, size_t first_group, size_t end_group);
    void absorb_rows(const LayerWeights& w, int64_t row0, int64_t count);
    void attend_absorbed(int64_t row, int64_t count, int64_t piece_row, const LatentCacheEntry& cache);
    void unabsorb_rows(const LayerWeights& w, int64_t row0, int64_t count);
    void attention_decompressed(const LayerWeights& w, int layer, size_t group);
    // A group's cache at `layer` with the step's new positions written (normalised latent, roped key).
    LatentCacheEntry open_cache(const LayerWeights& w, int layer, size_t group);
    bool use_decompressed(int64_t count, int64_t past) const;
    void mlp(const ExpertWeights& w, const float* in, int64_t n, float* out, bool accumulate);
    void moe(const LayerWeights& w, int layer, int64_t n);
    void predict_next_layer_experts(int layer, int64_t n);

    ModelLayout layout_;
    WeightProvider& weights_;
    ForwardOptions options_;
    ForwardShape shape_;
    std::unique_ptr<Backend> owned_backend_;  // the CPU backend of the pool constructor
    Backend& backend_;
    size_t backend_mark_ = 0;             // what the backend held before this object's buffers
    std::vector<int64_t> n_past_;         // [n_sequences]

    // Backend memory, allocated once. Activations [max_batch_tokens, width] each; q_latent_ and
    // attn_latent_ [absorbed_piece, heads * kv_rank].
    float *x_ = nullptr, *normed_ = nullptr, *q_compressed_ = nullptr, *q_ = nullptr, *kv_compressed_ = nullptr,
          *q_latent_ = nullptr, *q_rope_ = nullptr, *attn_latent_ = nullptr, *attn_heads_ = nullptr,
          *branch_out_ = nullptr, *router_logits_ = nullptr, *expert_in_ = nullptr, *expert_gate_ = nullptr,
          *expert_up_ = nullptr, *expert_out_ = nullptr;
    float* kv_block_ = nullptr;            // [decompress_block, heads, nope + v]: one block of expanded positions
    float *running_max_ = nullptr, *running_sum_ = nullptr;  // the decompressed form's online softmax
    float* rope_freq_ = nullptr;           // [rope_dim / 2]
    int64_t* step_positions_ = nullptr;    // [max_batch_tokens]
    int64_t* step_visible_ = nullptr;      // [max_batch_tokens]
    int32_t* routed_token_dev_ = nullptr;  // [max_batch_tokens * top_k]
    int32_t* token_slots_dev_ = nullptr;
    float* slot_weight_dev_ = nullptr;
    int32_t* logit_rows_dev_ = nullptr;    // [max_batch_tokens]
    std::unique_ptr<LatentCache> owned_cache_;  // when options_.latent_cache is null
    LatentCache* cache_ = nullptr;

    // Host-side bookkeeping of a step.
    std::vector<int32_t> expert_ids_;      // [max_batch_tokens, top_k]
    std::vector<float> expert_weights_;    // [max_batch_tokens, top_k]
    std::vector<int32_t> expert_count_;    // [n_experts]
    std::vector<int32_t> expert_begin_;    // [n_experts + 1]
    std::vector<int32_t> routed_token_;    // [max_batch_tokens * top_k], grouped by expert
    std::vector<float> routed_weight_;
    std::vector<int32_t> token_slots_;     // [max_batch_tokens * top_k]: each token's slots, ascending
    std::vector<int32_t> token_fill_;      // [max_batch_tokens]
    std::vector<int32_t> needed_experts_;  // ascending ids routed to in this step
    std::vector<int32_t> predicted_experts_;
    std::vector<uint8_t> predicted_mark_;  // [n_experts]
    std::vector<int64_t> n_visible_;       // [max_batch_tokens]
    std::vector<int64_t> positions_;       // [max_batch_tokens]
    std::vector<int32_t> step_tokens_;     // [max_batch_tokens]
    struct Group { int sequence; int64_t begin, count; };
    std::vector<Group> groups_;            // consecutive tokens of one sequence in this step
    std::vector<LatentCacheUse> cache_uses_;  // the groups as the latent cache sees them
    std::vector<int32_t> logit_rows_;      // rows of this step whose logits are wanted
};

}  // namespace sluice
