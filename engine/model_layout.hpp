// The sizes and switches of the forward pass, derived once from a ModelConfig (spec §1): the
// one place where config fields become the integers the engine indexes with.
#pragma once

#include <cstdint>

#include "formats/model_config.hpp"
#include "kernels/cpu/ops.hpp"

namespace sluice {

struct ModelLayout {
    int64_t vocab = 0;
    int64_t hidden = 0;
    int n_layers = 0;
    int64_t dense_inter = 0;   // dense MLP width
    int64_t moe_inter = 0;     // one routed expert's width
    int64_t n_experts = 0;
    int64_t n_shared = 0;
    int first_dense = 0;       // first_k_dense_replace
    int moe_every = 1;         // moe_layer_freq
    int64_t n_heads = 0;
    int64_t q_lora = 0;        // 0: no q_lora (V2-Lite q_proj)
    int64_t kv_rank = 0;
    int64_t nope = 0;
    int64_t rope_dim = 0;
    int64_t v_dim = 0;
    int64_t qk_head = 0;       // nope + rope_dim
    float rms_eps = 1e-6f;          // layer and final norms (config rms_norm_eps)
    // q_a / kv_a norms: both references (official model.py, transformers) build them with the
    // RMSNorm default 1e-6 whatever rms_norm_eps says; it matters for configs with 1e-5.
    float latent_norm_eps = 1e-6f;
    bool router_has_bias = false;
    cpu::RouterConfig router;
    cpu::RopeYarn rope;
    float softmax_scale = 0;
    float rope_magnitude = 1;
    int32_t bos_id = 0;
    int32_t eos_id = 1;
    // The file splits kv_b into attn_k_b / attn_v_b (MLA-era GGUF): the decompressed form then turns
    // each layer's k_b round into W_UK, a [heads, nope, kv_rank] f32 buffer (32 MiB on V3; in bf16,
    // 16 MiB, under --attention-precision bf16) that kv_b files never need. Set by the loader from
    // the plan; true until then, so nothing is missing.
    bool split_kv_b = true;

    bool is_moe_layer(int layer) const {
        return n_experts > 0 && layer >= first_dense && layer % moe_every == 0;
    }
    // Latent cache values per token per layer (spec §2.8): kv_rank + rope_dim.
    int64_t cache_width() const { return kv_rank + rope_dim; }

    static ModelLayout from(const ModelConfig& config);
};

}  // namespace sluice
