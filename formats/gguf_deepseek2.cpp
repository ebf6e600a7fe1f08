#include "formats/gguf_deepseek2.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

namespace sluice::gguf {

namespace {
constexpr std::string_view kArch = "deepseek2";

std::string key(std::string_view suffix) { return fmt::format("deepseek2.{}", suffix); }

uint32_t u32_or(const Metadata& m, std::string_view suffix, uint32_t fallback) {
    const auto k = key(suffix);
    return m.has(k) ? m.get_u32(k) : fallback;
}
float f32_or(const Metadata& m, std::string_view suffix, float fallback) {
    const auto k = key(suffix);
    return m.has(k) ? m.get_f32(k) : fallback;
}
std::optional<uint32_t> u32_opt(const Metadata& m, std::string_view suffix) {
    const auto k = key(suffix);
    return m.has(k) ? std::optional<uint32_t>(m.get_u32(k)) : std::nullopt;
}
}  // namespace

Deepseek2Hparams read_deepseek2_hparams(const Metadata& m) {
    const auto& arch = m.get_string("general.architecture");
    if (arch != kArch)
        fail(ErrorKind::unsupported, "general.architecture is '{}', the deepseek2 mapping needs 'deepseek2'", arch);
    Deepseek2Hparams h;
    h.block_count = m.get_u32(key("block_count"));
    h.context_length = u32_or(m, "context_length", 0);
    h.embedding_length = m.get_u32(key("embedding_length"));
    h.feed_forward_length = u32_or(m, "feed_forward_length", 0);
    h.head_count = m.get_u32(key("attention.head_count"));
    h.head_count_kv = u32_or(m, "attention.head_count_kv", h.head_count);
    h.key_length = m.get_u32(key("attention.key_length"));
    h.value_length = m.get_u32(key("attention.value_length"));
    h.key_length_mla = u32_opt(m, "attention.key_length_mla");
    h.value_length_mla = u32_opt(m, "attention.value_length_mla");
    h.q_lora_rank = u32_opt(m, "attention.q_lora_rank");
    h.kv_lora_rank = m.get_u32(key("attention.kv_lora_rank"));
    h.rms_norm_eps = f32_or(m, "attention.layer_norm_rms_epsilon", 1e-6f);
    h.rope_dimension_count = m.get_u32(key("rope.dimension_count"));
    h.rope_freq_base = f32_or(m, "rope.freq_base", 10000.0f);
    if (m.has(key("rope.scaling.type"))) h.rope_scaling_type = m.get_string(key("rope.scaling.type"));
    h.rope_scaling_factor = f32_or(m, "rope.scaling.factor", 1.0f);
    h.rope_scaling_original_context_length = u32_or(m, "rope.scaling.original_context_length", 0);
    h.rope_yarn_log_multiplier = f32_or(m, "rope.scaling.yarn_log_multiplier", 0.0f);
    h.leading_dense_block_count = u32_or(m, "leading_dense_block_count", 0);
    h.expert_count = u32_or(m, "expert_count", 0);
    h.expert_used_count = u32_or(m, "expert_used_count", 0);
    h.expert_shared_count = u32_or(m, "expert_shared_count", 0);
    h.expert_feed_forward_length = u32_or(m, "expert_feed_forward_length", 0);
    h.expert_weights_scale = f32_or(m, "expert_weights_scale", 1.0f);
    h.expert_weights_norm = m.has(key("expert_weights_norm")) ? m.get_bool(key("expert_weights_norm")) : false;
    const uint32_t gating = u32_or(m, "expert_gating_func", 1);
    if (gating != 1 && gating != 2)
        fail(ErrorKind::unsupported, "deepseek2.expert_gating_func = {} (only 1 softmax, 2 sigmoid)", gating);
    h.expert_gating_func = static_cast<ExpertGating>(gating);
    // Many V3/R1 conversions omit the group keys; the V3 router still uses 8 groups, top 4.
    const bool v3_shape = h.expert_count == 256;
    h.expert_group_count = u32_or(m, "expert_group_count", v3_shape ? 8 : 1);
    h.expert_group_used_count = u32_or(m, "expert_group_used_count", v3_shape ? 4 : 1);
    h.vocab_size = u32_or(m, "vocab_size", 0);
    h.nextn_predict_layers = u32_or(m, "nextn_predict_layers", 0);
    if (h.block_count == 0 || h.leading_dense_block_count > h.block_count)
        fail(ErrorKind::invalid_input, "deepseek2.leading_dense_block_count {} exceeds block_count {}",
             h.leading_dense_block_count, h.block_count);
    if (h.expert_count > 0 && (h.expert_used_count == 0 || h.expert_used_count > h.expert_count))
        fail(ErrorKind::invalid_input, "deepseek2.expert_used_count {} not in 1..expert_count {}", h.expert_used_count,
             h.expert_count);
    if (h.expert_group_count == 0 || (h.expert_count > 0 && h.expert_count % h.expert_group_count != 0) ||
        h.expert_group_used_count > h.expert_group_count)
        fail(ErrorKind::invalid_input, "deepseek2.expert_group_count {} / used {} do not divide expert_count {}",
             h.expert_group_count, h.expert_group_used_count, h.expert_count);
    return h;
}

namespace {

struct Mapper {
    const GgufModel& model;
    const std::string& path;

    const TensorInfo* optional(const std::string& name) const { return model.find_tensor(name); }
    const TensorInfo* required(const std::string& name) const {
        const TensorInfo* t = model.find_tensor(name);
        if (t == nullptr) fail(ErrorKind::invalid_input, "{}: missing required tensor '{}'", path, name);
        return t;
    }
    // Checks ne against the expected dims (ne[0] first); names the metadata it came from.
    void expect(const TensorInfo* t, std::initializer_list<int64_t> dims, std::string_view source) const {
        if (t == nullptr) return;
        size_t d = 0;
        bool ok = t->n_dims == dims.size();
        for (int64_t n : dims) ok = ok && t->ne[d++] == n;
        if (!ok)
            fail(ErrorKind::invalid_input, "{}: tensor '{}' has ne [{}, {}, {}, {}] ({} dims) but {} expects [{}]", path,
                 t->name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], t->n_dims, source, fmt::join(dims, ", "));
    }
};

}  // namespace

Deepseek2Tensors map_deepseek2_tensors(const GgufModel& model, const Deepseek2Hparams& h) {
    const std::string& path = model.splits().front().path;
    Mapper m{model, path};
    Deepseek2Tensors out;
    const int64_t d = h.embedding_length;
    out.token_embd = m.required("token_embd.weight");
    out.output_norm = m.required("output_norm.weight");
    out.output = m.optional("output.weight");
    if (h.vocab_size != 0) {
        m.expect(out.token_embd, {d, h.vocab_size}, "embedding_length x vocab_size");
        m.expect(out.output, {d, h.vocab_size}, "embedding_length x vocab_size");
    }
    m.expect(out.output_norm, {d}, "embedding_length");
    const int64_t rope = h.rope_dimension_count;
    const int64_t qk_nope = static_cast<int64_t>(h.key_length_mla.value_or(h.key_length)) - rope;
    const int64_t v_head = h.value_length_mla.value_or(h.value_length);
    const int64_t heads = h.head_count;
    const int64_t kv = h.kv_lora_rank;
    for (uint32_t b = 0; b < h.block_count; ++b) {
        auto n = [b](std::string_view s) { return fmt::format("blk.{}.{}.weight", b, s); };
        Deepseek2Layer L;
        L.attn_norm = m.required(n("attn_norm"));
        m.expect(L.attn_norm, {d}, "embedding_length");
        if (h.q_lora_rank) {
            const int64_t q = *h.q_lora_rank;
            L.attn_q_a = m.required(n("attn_q_a"));
            L.attn_q_a_norm = m.required(n("attn_q_a_norm"));
            L.attn_q_b = m.required(n("attn_q_b"));
            m.expect(L.attn_q_a, {d, q}, "embedding_length x q_lora_rank");
            m.expect(L.attn_q_a_norm, {q}, "q_lora_rank");
            m.expect(L.attn_q_b, {q, heads * (qk_nope + rope)}, "q_lora_rank x head_count*key_length");
        } else {
            L.attn_q = m.required(n("attn_q"));
            m.expect(L.attn_q, {d, heads * (qk_nope + rope)}, "embedding_length x head_count*key_length");
        }
        L.attn_kv_a_mqa = m.required(n("attn_kv_a_mqa"));
        m.expect(L.attn_kv_a_mqa, {d, kv + rope}, "embedding_length x kv_lora_rank+rope.dimension_count");
        L.attn_kv_a_norm = m.required(n("attn_kv_a_norm"));
        m.expect(L.attn_kv_a_norm, {kv}, "kv_lora_rank");
        L.attn_kv_b = m.optional(n("attn_kv_b"));
        if (L.attn_kv_b != nullptr) {
            m.expect(L.attn_kv_b, {kv, heads * (qk_nope + v_head)}, "kv_lora_rank x head_count*(qk_nope+value_length)");
        } else {
            L.attn_k_b = m.required(n("attn_k_b"));
            L.attn_v_b = m.required(n("attn_v_b"));
            m.expect(L.attn_k_b, {qk_nope, kv, heads}, "qk_nope x kv_lora_rank x head_count");
            m.expect(L.attn_v_b, {kv, v_head, heads}, "kv_lora_rank x value_length x head_count");
        }
        L.attn_output = m.required(n("attn_output"));
        m.expect(L.attn_output, {heads * v_head, d}, "head_count*value_length x embedding_length");
        L.ffn_norm = m.required(n("ffn_norm"));
        m.expect(L.ffn_norm, {d}, "embedding_length");
        if (b < h.leading_dense_block_count || h.expert_count == 0) {
            const int64_t ff = h.feed_forward_length;
            L.ffn_gate = m.required(n("ffn_gate"));
            L.ffn_up = m.required(n("ffn_up"));
            L.ffn_down = m.required(n("ffn_down"));
            m.expect(L.ffn_gate, {d, ff}, "embedding_length x feed_forward_length");
            m.expect(L.ffn_up, {d, ff}, "embedding_length x feed_forward_length");
            m.expect(L.ffn_down, {ff, d}, "feed_forward_length x embedding_length");
        } else {
            const int64_t ne = h.expert_count, eff = h.expert_feed_forward_length;
            L.ffn_gate_inp = m.required(n("ffn_gate_inp"));
            m.expect(L.ffn_gate_inp, {d, ne}, "embedding_length x expert_count");
            L.exp_probs_b = m.optional(fmt::format("blk.{}.exp_probs_b.bias", b));
            m.expect(L.exp_probs_b, {ne}, "expert_count");
            L.ffn_gate_up_exps = m.optional(n("ffn_gate_up_exps"));
            if (L.ffn_gate_up_exps != nullptr) {
                m.expect(L.ffn_gate_up_exps, {d, 2 * eff, ne}, "embedding_length x 2*expert_feed_forward_length x expert_count");
            } else {
                L.ffn_gate_exps = m.required(n("ffn_gate_exps"));
                L.ffn_up_exps = m.required(n("ffn_up_exps"));
                m.expect(L.ffn_gate_exps, {d, eff, ne}, "embedding_length x expert_feed_forward_length x expert_count");
                m.expect(L.ffn_up_exps, {d, eff, ne}, "embedding_length x expert_feed_forward_length x expert_count");
            }
            L.ffn_down_exps = m.required(n("ffn_down_exps"));
            m.expect(L.ffn_down_exps, {eff, d, ne}, "expert_feed_forward_length x embedding_length x expert_count");
            if (h.expert_shared_count > 0) {
                const int64_t sff = eff * h.expert_shared_count;
                L.ffn_gate_shexp = m.required(n("ffn_gate_shexp"));
                L.ffn_up_shexp = m.required(n("ffn_up_shexp"));
                L.ffn_down_shexp = m.required(n("ffn_down_shexp"));
                m.expect(L.ffn_gate_shexp, {d, sff}, "embedding_length x expert_feed_forward_length*expert_shared_count");
                m.expect(L.ffn_up_shexp, {d, sff}, "embedding_length x expert_feed_forward_length*expert_shared_count");
                m.expect(L.ffn_down_shexp, {sff, d}, "expert_feed_forward_length*expert_shared_count x embedding_length");
            }
        }
        out.layers.push_back(L);
    }
    return out;
}

Extent expert_extent(const TensorInfo& stacked, uint32_t expert) {
    if (stacked.n_dims != 3 || expert >= static_cast<uint64_t>(stacked.ne[2]))
        fail(ErrorKind::invalid_input, "tensor '{}': expert {} out of range (ne[2] = {}, n_dims {})", stacked.name, expert,
             stacked.ne[2], stacked.n_dims);
    const uint64_t slab = static_cast<uint64_t>(stacked.ne[1]) * static_cast<uint64_t>(row_bytes(stacked.type, stacked.ne[0]));
    return Extent{stacked.extent.file_index, stacked.extent.offset + expert * slab, slab};
}

}  // namespace sluice::gguf
