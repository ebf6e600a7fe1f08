#include "engine/model_report.hpp"

#include <fmt/format.h>

namespace sluice {

namespace {
void count_types(const Segment& s, ModelReport& r) {
    for (const auto& t : s.tensors) {
        const std::string name(dtype_name(t.type));
        ++r.tensors_by_type[name];
        r.bytes_by_type[name] += t.extent.length + t.scales.length;
    }
}

std::string human_bytes(uint64_t b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = double(b);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.2f} {}", v, units[u]);
}
}  // namespace

ModelReport make_model_report(const ModelLayout& d, const ModelPlan& plan) {
    ModelReport r;
    count_types(plan.globals, r);
    count_types(plan.global_vectors, r);
    r.global_bytes = plan.globals.bytes() + plan.global_vectors.bytes();
    // One decoded token reads: every layer's dense part, top_k experts per MoE layer, the
    // output head and one embedding row.
    uint64_t embed_row = 0, head = 0;
    for (const auto& t : plan.globals.tensors) {
        if (t.role == WeightRole::embed) embed_row = uint64_t(row_bytes(t.type, t.cols));
        if (t.role == WeightRole::lm_head) head = t.extent.length + t.scales.length;
    }
    r.bytes_per_decoded_token = embed_row + head + plan.global_vectors.bytes();
    for (size_t i = 0; i < plan.layers.size(); ++i) {
        const auto& l = plan.layers[i];
        LayerBytes lb;
        lb.layer = int(i);
        lb.is_moe = l.is_moe;
        lb.dense_bytes = l.dense.bytes() + l.vectors.bytes();
        count_types(l.dense, r);
        count_types(l.vectors, r);
        for (const auto& e : l.experts) {
            lb.all_experts_bytes += e.bytes();
            count_types(e, r);
        }
        if (!l.experts.empty()) lb.expert_bytes = l.experts[0].bytes();
        r.bytes_per_decoded_token += lb.dense_bytes + uint64_t(l.is_moe ? d.router.top_k : 0) * lb.expert_bytes;
        r.layers.push_back(lb);
    }
    r.total_bytes = plan.total_bytes();
    r.mla_cache_bytes_per_token_f32 = uint64_t(d.cache_width()) * 4 * uint64_t(d.n_layers);
    r.mla_cache_bytes_per_token_16bit = uint64_t(d.cache_width()) * 2 * uint64_t(d.n_layers);
    return r;
}

nlohmann::json model_report_json(const ModelLayout& d, const ModelReport& r) {
    nlohmann::json j;
    j["hyperparameters"] = {
        {"vocab", d.vocab}, {"hidden", d.hidden}, {"layers", d.n_layers}, {"first_dense_layers", d.first_dense},
        {"dense_intermediate", d.dense_inter}, {"moe_intermediate", d.moe_inter}, {"routed_experts", d.n_experts},
        {"shared_experts", d.n_shared}, {"experts_per_token", d.router.top_k}, {"expert_groups", d.router.n_group},
        {"groups_per_token", d.router.topk_group},
        {"scoring", d.router.scoring == cpu::RouterConfig::Scoring::sigmoid ? "sigmoid" : "softmax"},
        {"routed_scaling_factor", d.router.routed_scaling_factor}, {"heads", d.n_heads}, {"q_lora_rank", d.q_lora},
        {"kv_lora_rank", d.kv_rank}, {"qk_nope_head_dim", d.nope}, {"qk_rope_head_dim", d.rope_dim},
        {"v_head_dim", d.v_dim}, {"rope_theta", d.rope.theta}, {"yarn_factor", d.rope.factor},
        {"softmax_scale", d.softmax_scale}, {"rms_norm_eps", d.rms_eps}};
    nlohmann::json types = nlohmann::json::object();
    for (const auto& [name, count] : r.tensors_by_type) types[name] = {{"tensors", count}, {"bytes", r.bytes_by_type.at(name)}};
    j["tensor_types"] = types;
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : r.layers)
        layers.push_back({{"layer", l.layer}, {"moe", l.is_moe}, {"dense_bytes", l.dense_bytes},
                          {"expert_bytes", l.expert_bytes}, {"all_experts_bytes", l.all_experts_bytes}});
    j["layers"] = layers;
    j["total_bytes"] = r.total_bytes;
    j["global_bytes"] = r.global_bytes;
    j["bytes_per_decoded_token"] = r.bytes_per_decoded_token;
    j["mla_cache_bytes_per_token"] = {{"f32", r.mla_cache_bytes_per_token_f32}, {"16bit", r.mla_cache_bytes_per_token_16bit}};
    return j;
}

std::string model_report_text(const ModelLayout& d, const ModelReport& r) {
    std::string s;
    s += fmt::format("architecture: DeepSeek-V3 family, {} layers ({} dense first), hidden {}, vocab {}\n", d.n_layers,
                     d.first_dense, d.hidden, d.vocab);
    s += fmt::format("attention: MLA, {} heads, q_lora {}, kv_lora {}, head dims nope {} / rope {} / v {}, softmax scale {:.7f}\n",
                     d.n_heads, d.q_lora ? std::to_string(d.q_lora) : "none", d.kv_rank, d.nope, d.rope_dim, d.v_dim,
                     d.softmax_scale);
    s += fmt::format("rope: theta {}, yarn factor {} (original context {})\n", d.rope.theta, d.rope.factor,
                     d.rope.original_context);
    s += fmt::format("moe: {} routed experts (width {}) + {} shared, top {} of {} groups keep {}, {} scoring, scale {}\n",
                     d.n_experts, d.moe_inter, d.n_shared, d.router.top_k, d.router.n_group, d.router.topk_group,
                     d.router.scoring == cpu::RouterConfig::Scoring::sigmoid ? "sigmoid" : "softmax",
                     d.router.routed_scaling_factor);
    s += "tensor types:\n";
    for (const auto& [name, count] : r.tensors_by_type)
        s += fmt::format("  {:<14} {:>6} tensors  {:>12}\n", name, count, human_bytes(r.bytes_by_type.at(name)));
    s += "layer   kind   dense part     one expert     all experts\n";
    for (const auto& l : r.layers)
        s += fmt::format("{:>5}   {:<5}  {:>12}   {:>12}   {:>12}\n", l.layer, l.is_moe ? "moe" : "dense",
                         human_bytes(l.dense_bytes), human_bytes(l.expert_bytes), human_bytes(l.all_experts_bytes));
    s += fmt::format("embedding + head + final norm: {}\n", human_bytes(r.global_bytes));
    s += fmt::format("total: {} ({} bytes)\n", human_bytes(r.total_bytes), r.total_bytes);
    s += fmt::format("bytes read per decoded token (no cache hits): {}\n", human_bytes(r.bytes_per_decoded_token));
    s += fmt::format("MLA cache per token: {} as stored (f32), {} at 16 bits\n",
                     human_bytes(r.mla_cache_bytes_per_token_f32), human_bytes(r.mla_cache_bytes_per_token_16bit));
    return s;
}

}  // namespace sluice
