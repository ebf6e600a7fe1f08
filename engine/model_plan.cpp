#include "engine/model_plan.hpp"

#include <fmt/format.h>

#include "core/error.hpp"

namespace sluice {

const char* weight_role_name(WeightRole role) {
    switch (role) {
        case WeightRole::embed: return "embed";
        case WeightRole::final_norm: return "final_norm";
        case WeightRole::lm_head: return "lm_head";
        case WeightRole::attn_norm: return "attn_norm";
        case WeightRole::q_a: return "q_a";
        case WeightRole::q_a_norm: return "q_a_norm";
        case WeightRole::q_b: return "q_b";
        case WeightRole::q: return "q";
        case WeightRole::kv_a: return "kv_a";
        case WeightRole::kv_a_norm: return "kv_a_norm";
        case WeightRole::kv_b: return "kv_b";
        case WeightRole::k_b: return "k_b";
        case WeightRole::v_b: return "v_b";
        case WeightRole::o: return "o";
        case WeightRole::ffn_norm: return "ffn_norm";
        case WeightRole::dense_gate: return "dense_gate";
        case WeightRole::dense_up: return "dense_up";
        case WeightRole::dense_down: return "dense_down";
        case WeightRole::router: return "router";
        case WeightRole::router_bias: return "router_bias";
        case WeightRole::shared_gate: return "shared_gate";
        case WeightRole::shared_up: return "shared_up";
        case WeightRole::shared_down: return "shared_down";
        case WeightRole::expert_gate: return "expert_gate";
        case WeightRole::expert_up: return "expert_up";
        case WeightRole::expert_down: return "expert_down";
    }
    return "?";
}

uint64_t Segment::bytes() const {
    uint64_t total = 0;
    for (const auto& t : tensors) total += t.extent.length + t.scales.length;
    return total;
}

void Segment::extents(std::vector<Extent>& out) const {
    out.clear();
    for (const auto& t : tensors) {
        out.push_back(t.extent);
        if (t.scales.length) out.push_back(t.scales);
    }
}

bool plan_has_role(const ModelPlan& plan, WeightRole role) {
    for (const auto& l : plan.layers)
        for (const auto& t : l.dense.tensors)
            if (t.role == role) return true;
    return false;
}

uint64_t ModelPlan::total_bytes() const {
    uint64_t total = global_vectors.bytes() + globals.bytes();
    for (const auto& l : layers) {
        total += l.vectors.bytes() + l.dense.bytes();
        for (const auto& e : l.experts) total += e.bytes();
    }
    return total;
}

namespace {

// Presence, shape and type checks shared by the HF and GGUF planners.
class Planner {
public:
    explicit Planner(const TensorSource& source) : source_(source) {}

    const SourceTensor& require(const std::string& name) const {
        const auto* t = source_.find(name);
        if (!t) fail(ErrorKind::invalid_input, "{}: missing tensor '{}'", source_.describe(), name);
        return *t;
    }

    void check_shape(const SourceTensor& t, const std::vector<int64_t>& want) const {
        if (t.shape != want)
            fail(ErrorKind::invalid_input, "{}: tensor '{}' has shape [{}], expected [{}]", source_.describe(), t.name,
                 fmt::join(t.shape, ", "), fmt::join(want, ", "));
    }

    void vector(Segment& seg, WeightRole role, const std::string& name, int64_t n) const {
        const auto& t = require(name);
        check_shape(t, {n});
        const auto& traits = block_type(t.type);
        if (traits.block_elems != 1 || !traits.dequantize_row || t.type == DType::FP8_E4M3_B128)
            fail(ErrorKind::unsupported, "{}: tensor '{}' has type {}, expected a float vector", source_.describe(),
                 name, traits.name);
        seg.tensors.push_back({role, name, t.type, 1, n, t.extent, {}, 0});
    }

    void matrix(Segment& seg, WeightRole role, const std::string& name, int64_t rows, int64_t cols) const {
        const auto& t = require(name);
        check_shape(t, {rows, cols});
        check_computable(t);
        PlannedTensor p{role, name, t.type, rows, cols, t.extent, {}, 0};
        if (t.type == DType::FP8_E4M3_B128) {
            // Official FP8 release: W = fp8 * weight_scale_inv[r/128][c/128] (spec §3.3).
            const std::string scale_name = name + "_scale_inv";
            const auto& s = require(scale_name);
            check_shape(s, {(rows + 127) / 128, (cols + 127) / 128});
            if (s.type != DType::F32)
                fail(ErrorKind::invalid_input, "{}: tensor '{}' must be F32, is {}", source_.describe(), scale_name,
                     dtype_name(s.type));
            p.scales = s.extent;
        }
        seg.tensors.push_back(std::move(p));
    }

    // A 3-D tensor [n, rows, cols] used as one matrix of n * rows rows (per-head blocks).
    void stacked(Segment& seg, WeightRole role, const std::string& name, int64_t n, int64_t rows, int64_t cols) const {
        const auto& t = require(name);
        check_shape(t, {n, rows, cols});
        check_computable(t);
        seg.tensors.push_back({role, name, t.type, n * rows, cols, t.extent, {}, 0});
    }

    // A 3-D expert tensor [n_experts, rows, cols]: expert e is the contiguous slab
    // e * rows * row_bytes(cols) from its start (spec §3.8) — one extent, read as stored.
    void expert_slabs(std::vector<Segment>& experts, WeightRole role, const std::string& name, int64_t n_experts,
                      int64_t rows, int64_t cols) const {
        const auto& t = require(name);
        check_shape(t, {n_experts, rows, cols});
        check_computable(t);
        const uint64_t slab = uint64_t(rows) * uint64_t(row_bytes(t.type, cols));
        for (int64_t e = 0; e < n_experts; ++e) {
            Extent x{t.extent.file_index, t.extent.offset + uint64_t(e) * slab, slab};
            experts[size_t(e)].tensors.push_back(
                {role, fmt::format("{}[expert {}]", name, e), t.type, rows, cols, x, {}, 0});
        }
    }

    void check_computable(const SourceTensor& t) const {
        const auto& traits = block_type(t.type);
        if (!traits.dequantize_row)
            fail(ErrorKind::unsupported, "{}: tensor '{}' has type {}, which sluice cannot compute with",
                 source_.describe(), t.name, traits.name);
        const int64_t cols = t.shape.empty() ? 0 : t.shape.back();
        if (!row_fits_blocks(t.type, cols))
            fail(ErrorKind::invalid_input, "{}: tensor '{}': rows of {} values are not whole {} blocks of {}",
                 source_.describe(), t.name, cols, traits.name, traits.block_elems);
    }

private:
    const TensorSource& source_;
};

}  // namespace

ModelPlan plan_hf_model(const ModelLayout& d, const TensorSource& source) {
    Planner plan(source);
    ModelPlan mp;
    mp.files = source.files();
    plan.matrix(mp.globals, WeightRole::embed, "model.embed_tokens.weight", d.vocab, d.hidden);
    plan.matrix(mp.globals, WeightRole::lm_head, "lm_head.weight", d.vocab, d.hidden);
    plan.vector(mp.global_vectors, WeightRole::final_norm, "model.norm.weight", d.hidden);

    mp.layers.resize(size_t(d.n_layers));
    for (int i = 0; i < d.n_layers; ++i) {
        LayerPlan& l = mp.layers[size_t(i)];
        const std::string p = fmt::format("model.layers.{}.", i);
        const std::string a = p + "self_attn.";
        const std::string m = p + "mlp.";
        plan.vector(l.vectors, WeightRole::attn_norm, p + "input_layernorm.weight", d.hidden);
        plan.vector(l.vectors, WeightRole::ffn_norm, p + "post_attention_layernorm.weight", d.hidden);
        plan.vector(l.vectors, WeightRole::kv_a_norm, a + "kv_a_layernorm.weight", d.kv_rank);
        if (d.q_lora > 0) {
            plan.vector(l.vectors, WeightRole::q_a_norm, a + "q_a_layernorm.weight", d.q_lora);
            plan.matrix(l.dense, WeightRole::q_a, a + "q_a_proj.weight", d.q_lora, d.hidden);
            plan.matrix(l.dense, WeightRole::q_b, a + "q_b_proj.weight", d.n_heads * d.qk_head, d.q_lora);
        } else {
            plan.matrix(l.dense, WeightRole::q, a + "q_proj.weight", d.n_heads * d.qk_head, d.hidden);
        }
        plan.matrix(l.dense, WeightRole::kv_a, a + "kv_a_proj_with_mqa.weight", d.cache_width(), d.hidden);
        plan.matrix(l.dense, WeightRole::kv_b, a + "kv_b_proj.weight", d.n_heads * (d.nope + d.v_dim), d.kv_rank);
        plan.matrix(l.dense, WeightRole::o, a + "o_proj.weight", d.hidden, d.n_heads * d.v_dim);

        l.is_moe = d.is_moe_layer(i);
        if (!l.is_moe) {
            plan.matrix(l.dense, WeightRole::dense_gate, m + "gate_proj.weight", d.dense_inter, d.hidden);
            plan.matrix(l.dense, WeightRole::dense_up, m + "up_proj.weight", d.dense_inter, d.hidden);
            plan.matrix(l.dense, WeightRole::dense_down, m + "down_proj.weight", d.hidden, d.dense_inter);
            continue;
        }
        plan.matrix(l.vectors, WeightRole::router, m + "gate.weight", d.n_experts, d.hidden);
        if (d.router_has_bias)
            plan.vector(l.vectors, WeightRole::router_bias, m + "gate.e_score_correction_bias", d.n_experts);
        if (d.n_shared > 0) {
            const int64_t width = d.n_shared * d.moe_inter;
            plan.matrix(l.dense, WeightRole::shared_gate, m + "shared_experts.gate_proj.weight", width, d.hidden);
            plan.matrix(l.dense, WeightRole::shared_up, m + "shared_experts.up_proj.weight", width, d.hidden);
            plan.matrix(l.dense, WeightRole::shared_down, m + "shared_experts.down_proj.weight", d.hidden, width);
        }
        l.experts.resize(size_t(d.n_experts));
        for (int64_t e = 0; e < d.n_experts; ++e) {
            const std::string x = fmt::format("{}experts.{}.", m, e);
            Segment& seg = l.experts[size_t(e)];
            plan.matrix(seg, WeightRole::expert_gate, x + "gate_proj.weight", d.moe_inter, d.hidden);
            plan.matrix(seg, WeightRole::expert_up, x + "up_proj.weight", d.moe_inter, d.hidden);
            plan.matrix(seg, WeightRole::expert_down, x + "down_proj.weight", d.hidden, d.moe_inter);
        }
    }
    return mp;
}

ModelPlan plan_gguf_model(const ModelLayout& d, const TensorSource& source) {
    Planner plan(source);
    ModelPlan mp;
    mp.files = source.files();
    plan.matrix(mp.globals, WeightRole::embed, "token_embd.weight", d.vocab, d.hidden);
    // Files converted with tied embeddings have no output.weight: the head is the embedding.
    if (source.find("output.weight")) plan.matrix(mp.globals, WeightRole::lm_head, "output.weight", d.vocab, d.hidden);
    else plan.matrix(mp.globals, WeightRole::lm_head, "token_embd.weight", d.vocab, d.hidden);
    plan.vector(mp.global_vectors, WeightRole::final_norm, "output_norm.weight", d.hidden);

    mp.layers.resize(size_t(d.n_layers));
    for (int i = 0; i < d.n_layers; ++i) {
        LayerPlan& l = mp.layers[size_t(i)];
        const std::string p = fmt::format("blk.{}.", i);
        plan.vector(l.vectors, WeightRole::attn_norm, p + "attn_norm.weight", d.hidden);
        plan.vector(l.vectors, WeightRole::ffn_norm, p + "ffn_norm.weight", d.hidden);
        plan.vector(l.vectors, WeightRole::kv_a_norm, p + "attn_kv_a_norm.weight", d.kv_rank);
        if (d.q_lora > 0) {
            plan.vector(l.vectors, WeightRole::q_a_norm, p + "attn_q_a_norm.weight", d.q_lora);
            plan.matrix(l.dense, WeightRole::q_a, p + "attn_q_a.weight", d.q_lora, d.hidden);
            plan.matrix(l.dense, WeightRole::q_b, p + "attn_q_b.weight", d.n_heads * d.qk_head, d.q_lora);
        } else {
            plan.matrix(l.dense, WeightRole::q, p + "attn_q.weight", d.n_heads * d.qk_head, d.hidden);
        }
        plan.matrix(l.dense, WeightRole::kv_a, p + "attn_kv_a_mqa.weight", d.cache_width(), d.hidden);
        if (source.find(p + "attn_k_b.weight")) {
            // MLA-era files: k_b [heads][kv_rank][nope], v_b [heads][v_dim][kv_rank] (3-D, head-major).
            plan.stacked(l.dense, WeightRole::k_b, p + "attn_k_b.weight", d.n_heads, d.kv_rank, d.nope);
            plan.stacked(l.dense, WeightRole::v_b, p + "attn_v_b.weight", d.n_heads, d.v_dim, d.kv_rank);
        } else {
            plan.matrix(l.dense, WeightRole::kv_b, p + "attn_kv_b.weight", d.n_heads * (d.nope + d.v_dim), d.kv_rank);
        }
        plan.matrix(l.dense, WeightRole::o, p + "attn_output.weight", d.hidden, d.n_heads * d.v_dim);

        l.is_moe = d.is_moe_layer(i);
        if (!l.is_moe) {
            plan.matrix(l.dense, WeightRole::dense_gate, p + "ffn_gate.weight", d.dense_inter, d.hidden);
            plan.matrix(l.dense, WeightRole::dense_up, p + "ffn_up.weight", d.dense_inter, d.hidden);
            plan.matrix(l.dense, WeightRole::dense_down, p + "ffn_down.weight", d.hidden, d.dense_inter);
            continue;
        }
        plan.matrix(l.vectors, WeightRole::router, p + "ffn_gate_inp.weight", d.n_experts, d.hidden);
        if (d.router_has_bias) plan.vector(l.vectors, WeightRole::router_bias, p + "exp_probs_b.bias", d.n_experts);
        if (d.n_shared > 0) {
            const int64_t width = d.n_shared * d.moe_inter;
            plan.matrix(l.dense, WeightRole::shared_gate, p + "ffn_gate_shexp.weight", width, d.hidden);
            plan.matrix(l.dense, WeightRole::shared_up, p + "ffn_up_shexp.weight", width, d.hidden);
            plan.matrix(l.dense, WeightRole::shared_down, p + "ffn_down_shexp.weight", d.hidden, width);
        }
        l.experts.resize(size_t(d.n_experts));
        plan.expert_slabs(l.experts, WeightRole::expert_gate, p + "ffn_gate_exps.weight", d.n_experts, d.moe_inter,
                          d.hidden);
        plan.expert_slabs(l.experts, WeightRole::expert_up, p + "ffn_up_exps.weight", d.n_experts, d.moe_inter, d.hidden);
        plan.expert_slabs(l.experts, WeightRole::expert_down, p + "ffn_down_exps.weight", d.n_experts, d.hidden,
                          d.moe_inter);
    }
    return mp;
}

namespace {

Matrix view(const PlannedTensor& t, const std::byte* data, const std::byte* scales) {
    Matrix m{t.type, t.rows, t.cols, data, reinterpret_cast<const float*>(scales), t.scale_row_offset};
    if (t.type == DType::FP8_E4M3_B128 && !scales)
        fail(ErrorKind::internal, "FP8 tensor '{}' bound without its block scales", t.name);
    return m;
}

}  // namespace

void bind_globals(const Segment& segment, const std::byte* const* data, const std::byte* const* scales,
                  ModelWeights& out) {
    for (size_t i = 0; i < segment.tensors.size(); ++i) {
        const auto& t = segment.tensors[i];
        const Matrix m = view(t, data[i], scales[i]);
        if (t.role == WeightRole::embed) out.embed = m;
        else if (t.role == WeightRole::lm_head) out.lm_head = m;
        else fail(ErrorKind::internal, "tensor '{}' ({}) is not a global", t.name, weight_role_name(t.role));
    }
}

void bind_dense(const Segment& segment, const std::byte* const* data, const std::byte* const* scales,
                LayerWeights& out) {
    for (size_t i = 0; i < segment.tensors.size(); ++i) {
        const auto& t = segment.tensors[i];
        const Matrix m = view(t, data[i], scales[i]);
        switch (t.role) {
            case WeightRole::q_a: out.q_a = m; break;
            case WeightRole::q_b: out.q_b = m; break;
            case WeightRole::q: out.q = m; break;
            case WeightRole::kv_a: out.kv_a = m; break;
            case WeightRole::kv_b: out.kv_b = m; break;
            case WeightRole::k_b: out.k_b = m; break;
            case WeightRole::v_b: out.v_b = m; break;
            case WeightRole::o: out.o = m; break;
            case WeightRole::dense_gate: out.dense.gate = m; break;
            case WeightRole::dense_up: out.dense.up = m; break;
            case WeightRole::dense_down: out.dense.down = m; break;
            case WeightRole::router: out.router = m; break;
            case WeightRole::shared_gate: out.shared.gate = m; break;
            case WeightRole::shared_up: out.shared.up = m; break;
            case WeightRole::shared_down: out.shared.down = m; break;
            default: fail(ErrorKind::internal, "tensor '{}' ({}) is not part of a dense segment", t.name,
                          weight_role_name(t.role));
        }
    }
}

void bind_expert(const Segment& segment, const std::byte* const* data, const std::byte* const* scales,
                 ExpertWeights& out) {
    for (size_t i = 0; i < segment.tensors.size(); ++i) {
        const auto& t = segment.tensors[i];
        const Matrix m = view(t, data[i], scales[i]);
        switch (t.role) {
            case WeightRole::expert_gate: out.gate = m; break;
            case WeightRole::expert_up: out.up = m; break;
            case WeightRole::expert_down: out.down = m; break;
            default: fail(ErrorKind::internal, "tensor '{}' ({}) is not part of an expert", t.name,
                          weight_role_name(t.role));
        }
    }
}

namespace {

// Reads a segment's bytes into one owned buffer; data[i] / scales[i] point into it.
struct ReadSegment {
    std::vector<const std::byte*> data, scales;
    SegmentBytes bytes;
};

constexpr uint64_t round64(uint64_t v) { return (v + 63) / 64 * 64; }

// The owned buffer's size: every tensor and its scales, each 64-byte aligned.
uint64_t segment_buffer_bytes(const Segment& segment) {
    uint64_t total = 0;
    for (const auto& t : segment.tensors) total += round64(t.extent.length) + round64(t.scales.length);
    return total;
}

AlignedBuffer& keep(ModelWeights& out, size_t bytes) {
    auto& buf = out.storage.emplace_back(bytes, 64);
    out.resident_bytes += int64_t(buf.held());
    return buf;
}

ReadSegment read_segment(const Segment& segment, const TensorSource& source, ModelWeights& out) {
    ReadSegment r;
    auto& buf = keep(out, size_t(segment_buffer_bytes(segment)));
    r.bytes = {buf.data(), buf.size()};
    std::byte* cursor = buf.data();
    for (const auto& t : segment.tensors) {
        SourceTensor st{t.name, t.type, {}, t.extent};
        source.read(st, std::span<std::byte>(cursor, t.extent.length));
        r.data.push_back(cursor);
        cursor += round64(t.extent.length);
        if (t.scales.length) {
            SourceTensor ss{t.name + " (scales)", DType::F32, {}, t.scales};
            source.read(ss, std::span<std::byte>(cursor, t.scales.length));
            r.scales.push_back(cursor);
            cursor += round64(t.scales.length);
        } else {
            r.scales.push_back(nullptr);
        }
    }
    return r;
}

}  // namespace

uint64_t resident_segment_bytes(const Segment& segment) {
    return AlignedBuffer::held_bytes(size_t(segment_buffer_bytes(segment)), 64);
}

// A vector as stored, and its f32 copy when stored otherwise; the router matrix as a segment.
uint64_t resident_vector_bytes(const Segment& vectors) {
    uint64_t total = 0;
    for (const auto& t : vectors.tensors) {
        if (t.role == WeightRole::router) {
            Segment one;
            one.tensors.push_back(t);
            total += resident_segment_bytes(one);
            continue;
        }
        total += AlignedBuffer::held_bytes(size_t(t.extent.length), 64);
        if (t.type != DType::F32) total += AlignedBuffer::held_bytes(size_t(t.cols) * 4, 64);
    }
    return total;
}

void load_vectors(const ModelPlan& plan, const TensorSource& source, ModelWeights& out) {
    auto load = [&](const Segment& seg, auto&& assign) {
        for (const auto& t : seg.tensors) {
            if (t.role == WeightRole::router) continue;  // a matrix: below
            auto& buf = keep(out, size_t(t.extent.length));
            source.read(SourceTensor{t.name, t.type, {}, t.extent}, std::span<std::byte>(buf.data(), t.extent.length));
            const float* values = buf.as<float>();
            if (t.type != DType::F32) {
                auto& f32 = keep(out, size_t(t.cols) * 4);
                block_type(t.type).dequantize_row(buf.data(), f32.as<float>(), t.cols);
                values = f32.as<float>();
            }
            assign(t.role, values);
        }
    };
    load(plan.global_vectors, [&](WeightRole, const float* v) { out.final_norm = v; });
    out.layers.resize(plan.layers.size());
    for (size_t i = 0; i < plan.layers.size(); ++i) {
        LayerWeights& l = out.layers[i];
        l.is_moe = plan.layers[i].is_moe;
        load(plan.layers[i].vectors, [&](WeightRole role, const float* v) {
            switch (role) {
                case WeightRole::attn_norm: l.attn_norm = v; break;
                case WeightRole::ffn_norm: l.ffn_norm = v; break;
                case WeightRole::q_a_norm: l.q_a_norm = v; break;
                case WeightRole::kv_a_norm: l.kv_a_norm = v; break;
                case WeightRole::router_bias: l.router_bias = v; break;
                default: fail(ErrorKind::internal, "role {} is not a layer vector", weight_role_name(role));
            }
        });
        // The router matrix, as stored (and FP8 scales, if any).
        for (const auto& t : plan.layers[i].vectors.tensors) {
            if (t.role != WeightRole::router) continue;
            Segment one;
            one.tensors.push_back(t);
            const auto r = read_segment(one, source, out);
            l.router = view(t, r.data[0], r.scales[0]);
        }
    }
}

void load_globals(const ModelPlan& plan, const TensorSource& source, ModelWeights& out) {
    const auto r = read_segment(plan.globals, source, out);
    bind_globals(plan.globals, r.data.data(), r.scales.data(), out);
}

void load_dense_segment(const ModelPlan& plan, int layer, const TensorSource& source, ModelWeights& out) {
    const auto& segment = plan.layers[size_t(layer)].dense;
    const auto r = read_segment(segment, source, out);
    bind_dense(segment, r.data.data(), r.scales.data(), out.layers[size_t(layer)]);
    out.layers[size_t(layer)].dense_segment = r.bytes;
}

void load_dense_resident(const ModelPlan& plan, const TensorSource& source, ModelWeights& out) {
    for (size_t i = 0; i < plan.layers.size(); ++i) load_dense_segment(plan, int(i), source, out);
}

ModelWeights load_resident(const ModelLayout& layout, const ModelPlan& plan, const TensorSource& source) {
    (void)layout;
    ModelWeights w;
    load_vectors(plan, source, w);
    load_globals(plan, source, w);
    load_dense_resident(plan, source, w);
    for (size_t i = 0; i < plan.layers.size(); ++i) {
        const LayerPlan& lp = plan.layers[i];
        LayerWeights& l = w.layers[i];
        l.experts.resize(lp.experts.size());
        for (size_t e = 0; e < lp.experts.size(); ++e) {
            const auto re = read_segment(lp.experts[e], source, w);
            bind_expert(lp.experts[e], re.data.data(), re.scales.data(), l.experts[e]);
            l.experts[e].segment = re.bytes;
        }
    }
    return w;
}

}  // namespace sluice
