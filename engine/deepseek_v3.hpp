// The DeepSeek-V3 forward pass (spec §2), readable top to bottom: embedding, then per layer
// RMSNorm -> MLA (absorbed form over the latent cache) -> RMSNorm -> dense MLP or MoE, then the
// final norm and the output head. Scheduling, streaming and caching of weights live elsewhere;
// this file only asks for a layer's weights.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/thread_pool.hpp"
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
// from it, through the same list of buffers (DeepseekForward::bytes_for), so the plan is the
// allocation. A scheduler holding up to N sequences of up to C positions, running up to T tokens
// per step, plans and runs RunShape{N, C, T}; a program that runs several forwards one after
// another (bench) plans each of their shapes, and the planner holds the largest.
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
};

// One sequence's part of a batched step: its next tokens, and whether logits are wanted for
// all of them or only the last.
struct SequenceTokens {
    int sequence = 0;
    std::span<const int32_t> tokens;
    bool all_logits = false;
};

class DeepseekForward {
public:
    // Cache positions the decompressed form of attention expands at a time by default (V3: 256 x
    // 128 heads x 256 floats = 32 MiB); larger blocks only save per-block overhead.
    static constexpr int64_t kDecompressBlockPositions = 256;
    // Shared with the memory planner, which sizes these buffers before any forward exists.
    static cpu::DecompressedAttentionShape decompressed_shape(const ModelLayout& layout);
    static int64_t row_scratch_floats(const ModelLayout& layout);  // per thread

    DeepseekForward(const ModelLayout& layout, WeightProvider& weights, ForwardOptions options, ThreadPool& pool);

    // The bytes a forward with these options allocates, and the matmul scratch it reserves on
    // its threads, with a pool of n_threads: the planner's figures.
    struct Bytes {
        uint64_t mla_cache = 0;      // latent cache, all sequences and layers
        uint64_t activations = 0;    // step buffers and the routing bookkeeping
        uint64_t kernel_scratch = 0; // per-thread matmul scratch: kept by the threads after the forward, grown only
    };
    static Bytes bytes_for(const ModelLayout& layout, const ForwardOptions& options, int n_threads);

    // Runs `tokens` at the next positions of sequence 0, appending to its latent cache.
    // Writes logits [tokens.size(), vocab] when all_logits, else [1, vocab] for the last token.
    void forward(std::span<const int32_t> tokens, bool all_logits, float* logits);

    // One step over several sequences (at most shape().step_tokens tokens in all): every
    // sequence's tokens share the weights read for the step. Logits rows are written in batch
    // order: all positions of entries with all_logits, the last position of the others.
    void forward_batch(std::span<const SequenceTokens> batch, float* logits);

    int64_t position(int sequence = 0) const { return n_past_[size_t(sequence)]; }
    // Forgets positions >= n (n <= position()): a restart, or a rejected draft.
    void truncate(int64_t n, int sequence = 0);

    const ModelLayout& layout() const { return layout_; }
    const RunShape& shape() const { return options_.shape; }
    // Bytes this object holds (activations + latent cache), summed from what was allocated.
    int64_t allocated_bytes() const { return allocated_bytes_; }

private:
    // Calls visit(member, count) for every buffer of a forward with these options, in one list
    // that the constructor allocates from and bytes_for adds up.
    template <typename Visit>
    static void each_buffer(const ModelLayout& d, const ForwardOptions& o, int n_threads, Visit&& visit);
    static int64_t decompress_block_for(const ForwardOptions& o);
    // The most columns of any matrix the pass multiplies (kernel scratch is sized by it).
    static int64_t widest_matrix_cols(const ModelLayout& d);

    void run_step(int64_t n, float* logits);
    void attention(const LayerWeights& w, int layer, int64_t n);
    // The attention of one sequence's tokens (a group of the step) in the two forms of MLA, writing
    // attn_heads_ rows [begin, begin + count); the absorbed form takes a run of groups at once.
    void attention_absorbed(const LayerWeights& w, int layer, size_t first_group, size_t end_group);
    void attention_decompressed(const LayerWeights& w, int layer, size_t group);
    bool use_decompressed(int64_t count, int64_t past) const;
    void mlp(const ExpertWeights& w, const float* in, int64_t n, float* out, bool accumulate);
    void moe(const LayerWeights& w, int layer, int64_t n);
    void predict_next_layer_experts(int layer, int64_t n);

    ModelLayout layout_;
    WeightProvider& weights_;
    ForwardOptions options_;
    ThreadPool& pool_;
    std::vector<int64_t> n_past_;         // [n_sequences]

    // Activations, [step_tokens, width] each, allocated once.
    AlignedBuffer x_, normed_, q_compressed_, q_, kv_compressed_, q_latent_, q_rope_, attn_latent_, attn_heads_,
        branch_out_, router_logits_, expert_in_, expert_gate_, expert_up_, expert_out_, attention_scratch_,
        row_scratch_,  // per thread: a kv_rank row (transposed absorb product) or rows being turned round
        kv_block_,     // [decompress_block_, heads, nope + v]: one block of expanded cache positions
        w_uk_,         // [heads, nope, kv_rank]: a k_b layer's W_UK turned round for the expansion
        running_max_, running_sum_, decompressed_scratch_;  // the decompressed form's online softmax
    int64_t decompress_block_ = 0;         // positions expanded at a time
    int64_t row_scratch_floats_ = 0;       // per thread in row_scratch_
    std::vector<int> expert_ids_;          // [step_tokens, top_k]
    std::vector<float> expert_weights_;    // [step_tokens, top_k]
    std::vector<int32_t> expert_count_;    // [n_experts]
    std::vector<int32_t> expert_begin_;    // [n_experts + 1]
    std::vector<int32_t> routed_token_;    // [step_tokens * top_k], grouped by expert
    std::vector<float> routed_weight_;
    std::vector<int32_t> needed_experts_;  // ascending ids routed to in this step
    std::vector<int32_t> predicted_experts_;
    std::vector<uint8_t> predicted_mark_;  // [n_experts]
    std::vector<int64_t> n_visible_;       // [step_tokens]
    std::vector<int64_t> positions_;       // [step_tokens]
    std::vector<int32_t> step_tokens_;     // [step_tokens]
    std::vector<int32_t> step_sequence_;   // [step_tokens]
    struct Group { int sequence; int64_t begin, count; };
    std::vector<Group> groups_;            // consecutive tokens of one sequence in this step
    std::vector<int64_t> logit_rows_;      // rows of this step whose logits are wanted
    // Latent cache per (sequence, layer): normalised latent [positions, kv_rank] and roped
    // key [positions, rope]; index sequence * n_layers + layer.
    std::vector<AlignedBuffer> cache_latent_, cache_rope_;
    std::vector<float> rope_freq_;
    int64_t allocated_bytes_ = 0;
};

}  // namespace sluice
