// llama.cpp `deepseek2` GGUFs (spec §3.7-3.8): hyperparameters from metadata (with the spec's
// absent-key defaults) and the per-layer tensor set, checked against each other.
#pragma once

#include "formats/gguf.hpp"

#include <optional>
#include <string>
#include <vector>

namespace sluice::gguf {

enum class ExpertGating : uint32_t { softmax = 1, sigmoid = 2 };

struct Deepseek2Hparams {
    uint32_t block_count = 0;
    uint32_t context_length = 0;
    uint32_t embedding_length = 0;
    uint32_t feed_forward_length = 0;
    uint32_t head_count = 0;
    uint32_t head_count_kv = 0;
    uint32_t key_length = 0;
    uint32_t value_length = 0;
    std::optional<uint32_t> key_length_mla;    // present => attn_k_b / attn_v_b
    std::optional<uint32_t> value_length_mla;
    std::optional<uint32_t> q_lora_rank;       // absent for V2-Lite (attn_q)
    uint32_t kv_lora_rank = 0;
    float rms_norm_eps = 1e-6f;
    uint32_t rope_dimension_count = 0;
    float rope_freq_base = 10000.0f;
    std::string rope_scaling_type;             // "" when absent
    float rope_scaling_factor = 1.0f;
    uint32_t rope_scaling_original_context_length = 0;
    float rope_yarn_log_multiplier = 0.0f;
    uint32_t leading_dense_block_count = 0;
    uint32_t expert_count = 0;
    uint32_t expert_used_count = 0;
    uint32_t expert_shared_count = 0;
    uint32_t expert_feed_forward_length = 0;
    float expert_weights_scale = 1.0f;
    bool expert_weights_norm = false;
    ExpertGating expert_gating_func = ExpertGating::softmax;  // absent => softmax (old V2)
    uint32_t expert_group_count = 1;        // absent => 8 for 256-expert V3 shapes, else 1
    uint32_t expert_group_used_count = 1;   // absent => 4 for 256-expert V3 shapes, else 1
    uint32_t vocab_size = 0;
    uint32_t nextn_predict_layers = 0;
};

// Throws unsupported when general.architecture is not "deepseek2".
Deepseek2Hparams read_deepseek2_hparams(const Metadata& metadata);

struct Deepseek2Layer {
    const TensorInfo* attn_norm = nullptr;
    const TensorInfo* attn_q_a = nullptr;       // null for V2-Lite
    const TensorInfo* attn_q_a_norm = nullptr;  // null for V2-Lite
    const TensorInfo* attn_q_b = nullptr;       // null for V2-Lite
    const TensorInfo* attn_q = nullptr;         // V2-Lite only
    const TensorInfo* attn_kv_a_mqa = nullptr;
    const TensorInfo* attn_kv_a_norm = nullptr;
    const TensorInfo* attn_kv_b = nullptr;      // legacy files
    const TensorInfo* attn_k_b = nullptr;       // MLA-era files
    const TensorInfo* attn_v_b = nullptr;
    const TensorInfo* attn_output = nullptr;
    const TensorInfo* ffn_norm = nullptr;
    // dense layers
    const TensorInfo* ffn_gate = nullptr;
    const TensorInfo* ffn_up = nullptr;
    const TensorInfo* ffn_down = nullptr;
    // MoE layers
    const TensorInfo* ffn_gate_inp = nullptr;
    const TensorInfo* exp_probs_b = nullptr;    // optional (sigmoid routing bias)
    const TensorInfo* ffn_gate_exps = nullptr;
    const TensorInfo* ffn_up_exps = nullptr;
    const TensorInfo* ffn_gate_up_exps = nullptr;  // fused variant instead of gate+up
    const TensorInfo* ffn_down_exps = nullptr;
    const TensorInfo* ffn_gate_shexp = nullptr;
    const TensorInfo* ffn_up_shexp = nullptr;
    const TensorInfo* ffn_down_shexp = nullptr;
    bool is_moe() const { return ffn_gate_inp != nullptr; }
};

struct Deepseek2Tensors {
    const TensorInfo* token_embd = nullptr;
    const TensorInfo* output_norm = nullptr;
    const TensorInfo* output = nullptr;  // null when tied to token_embd
    std::vector<Deepseek2Layer> layers;
};

// Finds every tensor the hyperparameters call for; a missing required tensor or a shape that
// disagrees with the metadata throws naming both. Pointers stay valid while `model` lives.
Deepseek2Tensors map_deepseek2_tensors(const GgufModel& model, const Deepseek2Hparams& hparams);

// Expert e of a stacked [ne0, ne1, n_expert] tensor: the contiguous slab
// [e * ne1 * row_bytes(type, ne0), +ne1 * row_bytes) from the tensor's start.
Extent expert_extent(const TensorInfo& stacked, uint32_t expert);

}  // namespace sluice::gguf
