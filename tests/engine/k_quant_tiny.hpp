// The tiny DeepSeek-V3 shapes the engine tests write as K-quant GGUFs (engine/synth_gguf).
#pragma once

#include "engine/synth.hpp"

namespace sluice {

// Tiny DeepSeek-V3 shapes whose rows fit K-quant super-blocks (256), with the real vocabulary.
inline ModelConfig k_quant_tiny() {
    ModelConfig c = synth_preset("tiny");
    c.hidden_size = 256;
    c.n_layers = 3;
    c.first_k_dense_replace = 1;
    c.intermediate_size = 512;
    c.moe_intermediate_size = 256;
    c.n_routed_experts = 8;
    c.num_experts_per_tok = 2;
    c.n_group = 2;
    c.topk_group = 1;
    c.n_heads = 2;
    c.q_lora_rank = 256;
    c.kv_lora_rank = 256;
    c.qk_nope_head_dim = 32;  // attn_k_b rows of 32: falls back to Q8_0
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 128;
    c.num_nextn_predict_layers = 0;
    return c;
}

}  // namespace sluice
