#include "engine/model_layout.hpp"

#include <cmath>

#include "core/error.hpp"

namespace sluice {

namespace {
// yarn_get_mscale (spec §2.5 step 5): 1 for factor <= 1.
double yarn_mscale(double factor, double m) { return factor <= 1 ? 1.0 : 0.1 * m * std::log(factor) + 1.0; }
}  // namespace

ModelLayout ModelLayout::from(const ModelConfig& c) {
    ModelLayout d;
    d.vocab = c.vocab_size;
    d.hidden = c.hidden_size;
    d.n_layers = c.n_layers;
    d.dense_inter = c.intermediate_size;
    d.moe_inter = c.moe_intermediate_size;
    d.n_experts = c.n_routed_experts;
    d.n_shared = c.n_shared_experts;
    d.first_dense = c.first_k_dense_replace;
    d.moe_every = std::max(c.moe_layer_freq, 1);
    d.n_heads = c.n_heads;
    d.q_lora = c.q_lora_rank.value_or(0);
    d.kv_rank = c.kv_lora_rank;
    d.nope = c.qk_nope_head_dim;
    d.rope_dim = c.qk_rope_head_dim;
    d.v_dim = c.v_head_dim;
    d.qk_head = c.qk_head_dim();
    d.rms_eps = float(c.rms_norm_eps);
    d.bos_id = int32_t(c.bos_token_id);
    d.eos_id = int32_t(c.eos_token_id());

    d.router.n_experts = int(c.n_routed_experts);
    d.router.top_k = int(c.num_experts_per_tok);
    d.router.n_group = int(std::max<int64_t>(c.n_group, 1));
    d.router.topk_group = int(std::max<int64_t>(c.topk_group, 1));
    d.router.scoring = c.scoring_func == ScoringFunc::sigmoid ? cpu::RouterConfig::Scoring::sigmoid
                                                              : cpu::RouterConfig::Scoring::softmax;
    switch (c.topk_method) {
        case TopkMethod::noaux_tc: d.router.group_score = cpu::RouterConfig::GroupScore::top2_sum; break;
        case TopkMethod::group_limited_greedy: d.router.group_score = cpu::RouterConfig::GroupScore::max; break;
        case TopkMethod::greedy:
            // No group limit at all.
            d.router.n_group = 1;
            d.router.topk_group = 1;
            break;
    }
    d.router.norm_topk_prob = c.norm_topk_prob;
    d.router.routed_scaling_factor = float(c.routed_scaling_factor);
    // noaux_tc selects with the e_score_correction_bias; the V2 methods have none.
    d.router_has_bias = c.topk_method == TopkMethod::noaux_tc;

    d.rope.dim = int(c.qk_rope_head_dim);
    d.rope.theta = float(c.rope_theta);
    double attention_scale = 1.0 / std::sqrt(double(d.qk_head));
    if (c.rope_scaling) {
        const auto& y = *c.rope_scaling;
        d.rope.factor = float(y.factor);
        d.rope.original_context = int(y.original_max_position_embeddings);
        d.rope.beta_fast = float(y.beta_fast);
        d.rope.beta_slow = float(y.beta_slow);
        d.rope.mscale = float(y.mscale);
        d.rope.mscale_all_dim = float(y.mscale_all_dim);
        // cos/sin magnitude and softmax scale exactly as transformers derives them (and the
        // official demo, for the released configs where mscale == mscale_all_dim): spec §2.5-2.6.
        d.rope_magnitude = (y.mscale != 0 && y.mscale_all_dim != 0)
                               ? float(yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim))
                               : float(yarn_mscale(y.factor, 1.0));
        if (y.mscale_all_dim != 0) {
            const double m = yarn_mscale(y.factor, y.mscale_all_dim);
            attention_scale *= m * m;
        }
    } else {
        d.rope.factor = 1.0f;
    }
    d.softmax_scale = float(attention_scale);
    return d;
}

}  // namespace sluice
