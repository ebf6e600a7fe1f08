#include "engine/shape_model.hpp"

#include <unordered_map>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/synth_gguf.hpp"
#include "kernels/random_blocks.hpp"

namespace sluice {

namespace {

// The tensors at the offsets a 4096-aligned GGUF would give them; reading fills random blocks.
class ShapeSource final : public TensorSource {
public:
    ShapeSource(const std::vector<GgufSynthTensor>& tensors, std::string name) : name_(std::move(name)) {
        files_.paths = {name_};
        uint64_t offset = 0;
        for (const auto& t : tensors) {
            Entry e{SourceTensor{t.name, t.type, {}, Extent{0, offset, t.size_bytes()}}, t.fill, t.std};
            for (auto d = t.ne.rbegin(); d != t.ne.rend(); ++d) e.tensor.shape.push_back(*d);  // PyTorch order
            offset += (t.size_bytes() + kAlignmentBytes - 1) / kAlignmentBytes * kAlignmentBytes;
            tensors_.emplace(t.name, std::move(e));
        }
    }
    const SourceTensor* find(std::string_view name) const override {
        const auto it = tensors_.find(std::string(name));
        return it == tensors_.end() ? nullptr : &it->second.tensor;
    }
    // `tensor` may be a slice of a planned tensor (one expert of a 3-D one): its blocks are the
    // ones at its offset, so every slice reads the same values whichever way it is read.
    void read(const SourceTensor& tensor, std::span<std::byte> out) const override {
        // An expert's slab is named "<tensor>[expert e]" (model_plan.cpp).
        const auto it = tensors_.find(tensor.name.substr(0, tensor.name.find('[')));
        if (it == tensors_.end()) fail(ErrorKind::internal, "{}: no tensor '{}'", name_, tensor.name);
        const Entry& e = it->second;
        const uint64_t block_bytes = uint64_t(block_type(e.tensor.type).block_bytes);
        const uint64_t begin = tensor.extent.offset - e.tensor.extent.offset;
        if (tensor.extent.length > out.size() || begin % block_bytes || tensor.extent.length % block_bytes ||
            begin + tensor.extent.length > e.tensor.extent.length)
            fail(ErrorKind::internal, "{}: tensor '{}': bytes [{}, +{}) are not whole blocks of it", name_, tensor.name, begin,
                 tensor.extent.length);
        fill_random_blocks(e.tensor.type, e.fill, e.std, std::hash<std::string>{}(e.tensor.name), begin / block_bytes,
                           out.data(), int64_t(tensor.extent.length / block_bytes));
    }
    std::string describe() const override { return name_; }
    const FileSet& files() const override { return files_; }

private:
    static constexpr uint64_t kAlignmentBytes = 4096;
    struct Entry {
        SourceTensor tensor;
        RandomFill fill;
        double std;
    };
    std::string name_;
    FileSet files_;
    std::unordered_map<std::string, Entry> tensors_;
};

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

// The block index of "blk.N....", or -1.
int layer_of(const std::string& name) {
    int layer = -1;
    return std::sscanf(name.c_str(), "blk.%d.", &layer) == 1 ? layer : -1;
}

// llama.cpp's use_more_bits (llama-quant.cpp): the first and last eighth of the layers and every
// third one between them.
bool use_more_bits(int layer, int n_layers) {
    return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

// The type llama.cpp's rules for `mix` give tensor `name`, starting from synth's `type`.
DType mix_type(const std::string& mix, int n_layers, const std::string& name, DType type) {
    if (type == DType::F32) return type;  // norms, router, exp_probs_b stay as they are
    if (name == "output.weight") return DType::Q6_K;
    if (mix == "q4_k_m") return contains(name, "ffn_down") && use_more_bits(layer_of(name), n_layers) ? DType::Q6_K : type;
    // q2_k
    if (contains(name, "ffn_down") || contains(name, "attn_output")) return DType::Q3_K;
    return type == DType::Q8_0 ? type : DType::Q2_K;  // attn_k_b keeps its fallback (rows of 128)
}

}  // namespace

std::unique_ptr<OpenModel> open_shape_model(const ModelConfig& config, const GgufSynthOptions& types,
                                            const std::function<DType(const GgufSynthTensor&)>& retype,
                                            const std::string& name) {
    GgufSynthOptions synth = types;
    synth.config = config;
    auto tensors = synth_gguf_tensors(synth);
    if (retype)
        for (auto& t : tensors) t.type = retype(t);
    for (const auto& t : tensors)
        if (!row_fits_blocks(t.type, t.ne[0]))
            fail(ErrorKind::invalid_input, "shapes: tensor '{}': type {} needs rows that are a multiple of {} values, not {}",
                 t.name, dtype_name(t.type), block_type(t.type).block_elems, t.ne[0]);
    auto m = std::make_unique<OpenModel>();
    m->path = name;
    m->format = "shapes";
    m->config = config;
    m->layout = ModelLayout::from(m->config);
    m->source = std::make_unique<ShapeSource>(tensors, m->path);
    m->plan = plan_gguf_model(m->layout, *m->source);
    m->layout.split_kv_b = plan_has_role(m->plan, WeightRole::k_b);
    return m;
}

std::unique_ptr<OpenModel> open_shape_model(const ShapeModelOptions& o) {
    if (!o.mix.empty() && o.mix != "q4_k_m" && o.mix != "q2_k")
        fail(ErrorKind::invalid_input, "--mix '{}' is not one of q4_k_m, q2_k", o.mix);
    GgufSynthOptions synth;
    const ModelConfig config = synth_gguf_config(o.preset, o.layers, o.dense_layers, o.experts);
    if (o.mix.empty()) {
        synth.expert_type = o.expert_type;
        synth.dense_type = o.dense_type;
        synth.embed_type = o.embed_type;
        synth.head_type = o.head_type;
    } else {
        synth.expert_type = synth.dense_type = o.mix == "q2_k" ? DType::Q2_K : DType::Q4_K;
    }
    const std::string types = o.mix.empty() ? fmt::format("experts {}, dense {}", dtype_name(o.expert_type),
                                                          dtype_name(o.dense_type))
                                            : o.mix;
    const std::string name = fmt::format("{} shapes ({} layers, {} experts, {})", o.preset, config.n_layers,
                                         config.n_routed_experts, types);
    std::function<DType(const GgufSynthTensor&)> retype;
    if (!o.mix.empty()) retype = [&](const GgufSynthTensor& t) { return mix_type(o.mix, config.n_layers, t.name, t.type); };
    return open_shape_model(config, synth, retype, name);
}

}  // namespace sluice
