// Random DeepSeek-V3-architecture checkpoints. Values come from a counter-free per-tensor
// generator seeded by (seed, tensor name), so a tensor's contents do not depend on which other
// tensors exist or on shard boundaries, and --layers 2 gives the same layer 0 as --layers 4.
#include "engine/synth.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/half.hpp"

namespace sluice {

namespace {

namespace fs = std::filesystem;

uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t fnv1a(std::string_view s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
    return h;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool is_norm(std::string_view name) { return ends_with(name, "norm.weight"); }

// Appends one tensor's values to `writer` through the reusable `chunk` buffer.
void write_tensor_values(SafetensorsWriter& writer, const SafetensorsTensorSpec& spec, uint64_t seed,
                         std::vector<std::byte>& chunk) {
    const bool bf16 = spec.dtype_name == "BF16";
    const size_t element_bytes = bf16 ? 2 : 4;
    const size_t chunk_elements = chunk.size() / element_bytes;
    const double std_dev = synth_weight_std(spec);
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    const float half_width = static_cast<float>(std_dev * std::sqrt(3.0));
    uint64_t state = seed ^ fnv1a(spec.name);

    uint64_t remaining = SafetensorsWriter::tensor_bytes(spec) / element_bytes;
    while (remaining > 0) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining, chunk_elements));
        for (size_t i = 0; i < n; ++i) {
            float value = 1.0f;
            if (std_dev > 0) {
                // 24 random bits -> [0, 1) -> [-a, a)
                float unit = static_cast<float>(splitmix64(state) >> 40) * (1.0f / 16777216.0f);
                value = (2.0f * unit - 1.0f) * half_width;
            }
            if (bf16) {
                uint16_t h = f32_to_bf16(value);
                std::memcpy(chunk.data() + 2 * i, &h, 2);
            } else {
                std::memcpy(chunk.data() + 4 * i, &value, 4);
            }
        }
        writer.append(std::span(chunk).first(n * element_bytes));
        remaining -= n;
    }
}

void write_text_file(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) fail(ErrorKind::io, "{}: cannot create", path.string());
    out << text;
    if (!out) fail(ErrorKind::io, "{}: write failed", path.string());
}

void append_mlp(std::vector<SafetensorsTensorSpec>& out, const std::string& prefix, int64_t hidden, int64_t inter,
                const std::string& dtype) {
    out.push_back({prefix + ".gate_proj.weight", dtype, {inter, hidden}});
    out.push_back({prefix + ".up_proj.weight", dtype, {inter, hidden}});
    out.push_back({prefix + ".down_proj.weight", dtype, {hidden, inter}});
}

void append_layer(std::vector<SafetensorsTensorSpec>& out, const ModelConfig& c, int layer, bool moe, const std::string& dtype) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    const int64_t h = c.hidden_size;
    out.push_back({p + "input_layernorm.weight", dtype, {h}});
    // MLA projections (spec §2.4): q [heads*(nope+rope)], latent kv [kv_lora + rope].
    if (c.q_lora_rank) {
        out.push_back({p + "self_attn.q_a_proj.weight", dtype, {*c.q_lora_rank, h}});
        out.push_back({p + "self_attn.q_a_layernorm.weight", dtype, {*c.q_lora_rank}});
        out.push_back({p + "self_attn.q_b_proj.weight", dtype, {c.n_heads * c.qk_head_dim(), *c.q_lora_rank}});
    } else {
        out.push_back({p + "self_attn.q_proj.weight", dtype, {c.n_heads * c.qk_head_dim(), h}});
    }
    out.push_back({p + "self_attn.kv_a_proj_with_mqa.weight", dtype, {c.kv_lora_rank + c.qk_rope_head_dim, h}});
    out.push_back({p + "self_attn.kv_a_layernorm.weight", dtype, {c.kv_lora_rank}});
    out.push_back({p + "self_attn.kv_b_proj.weight", dtype, {c.n_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}});
    out.push_back({p + "self_attn.o_proj.weight", dtype, {h, c.n_heads * c.v_head_dim}});
    out.push_back({p + "post_attention_layernorm.weight", dtype, {h}});
    if (!moe) {
        append_mlp(out, p + "mlp", h, c.intermediate_size, dtype);
        return;
    }
    out.push_back({p + "mlp.gate.weight", dtype, {c.n_routed_experts, h}});
    if (c.topk_method == TopkMethod::noaux_tc) out.push_back({p + "mlp.gate.e_score_correction_bias", "F32", {c.n_routed_experts}});
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
        append_mlp(out, fmt::format("{}mlp.experts.{}", p, e), h, c.moe_intermediate_size, dtype);
    if (c.n_shared_experts > 0)
        append_mlp(out, p + "mlp.shared_experts", h, c.moe_intermediate_size * c.n_shared_experts, dtype);
}

}  // namespace

ModelConfig synth_preset(std::string_view name) {
    ModelConfig c = ModelConfig::deepseek_v3_671b();
    c.quantization.reset();  // synth writes F32/BF16 weights, never FP8
    if (name == "v3") return c;
    c.rope_scaling = YarnRopeScaling{40.0, 4096, 32.0, 1.0, 1.0, 1.0};
    c.max_position_embeddings = 163840;
    c.num_nextn_predict_layers = 0;
    if (name == "demo") {
        // The README's first command: DeepSeek-V3's attention (16 heads of it), vocabulary and
        // routing, narrower: 8 layers, 128 experts of 2048 x 1024, so that at Q4_K the experts
        // (3.2 GB) dwarf what stays resident and the model streams under a budget a third its size.
        c.hidden_size = 2048;
        c.n_layers = 8;
        c.first_k_dense_replace = 1;
        c.intermediate_size = 5632;
        c.moe_intermediate_size = 1024;
        c.n_routed_experts = 128;
        c.n_shared_experts = 1;
        c.num_experts_per_tok = 8;
        c.n_heads = 16;
        return c;
    }
    if (name == "small") {
        c.hidden_size = 256;
        c.n_layers = 4;
        c.first_k_dense_replace = 1;
        c.intermediate_size = 512;
        c.moe_intermediate_size = 128;
        c.n_routed_experts = 16;
        c.n_shared_experts = 1;
        c.num_experts_per_tok = 4;
        c.n_group = 4;
        c.topk_group = 2;
        c.n_heads = 4;
        c.q_lora_rank = 96;
        c.kv_lora_rank = 64;
        c.qk_nope_head_dim = 32;
        c.qk_rope_head_dim = 16;
        c.v_head_dim = 32;
        return c;
    }
    if (name == "tiny") {
        c.hidden_size = 64;
        c.n_layers = 2;
        c.first_k_dense_replace = 1;
        c.intermediate_size = 128;
        c.moe_intermediate_size = 32;
        c.n_routed_experts = 8;
        c.n_shared_experts = 1;
        c.num_experts_per_tok = 2;
        c.n_group = 2;
        c.topk_group = 1;
        c.n_heads = 2;
        c.q_lora_rank = 32;
        c.kv_lora_rank = 32;
        c.qk_nope_head_dim = 16;
        c.qk_rope_head_dim = 8;
        c.v_head_dim = 16;
        return c;
    }
    fail(ErrorKind::invalid_input, "synth: preset '{}' is not one of tiny, small, demo, v3", name);
}

std::vector<SafetensorsTensorSpec> synth_tensor_specs(const ModelConfig& c, std::string_view weight_dtype) {
    const std::string dtype(weight_dtype);
    if (dtype != "F32" && dtype != "BF16")
        fail(ErrorKind::invalid_input, "synth: weight dtype '{}' is not F32 or BF16", weight_dtype);
    std::vector<SafetensorsTensorSpec> out;
    const int64_t h = c.hidden_size;
    out.push_back({"model.embed_tokens.weight", dtype, {c.vocab_size, h}});
    for (int layer = 0; layer < c.n_layers; ++layer) append_layer(out, c, layer, c.is_moe_layer(layer), dtype);
    // MTP modules (spec §2.13) follow the main stack; each is a full MoE layer plus its own
    // embedding, norms, projection and head copies.
    for (int k = 0; k < c.num_nextn_predict_layers; ++k) {
        const int layer = c.n_layers + k;
        const std::string p = fmt::format("model.layers.{}.", layer);
        out.push_back({p + "embed_tokens.weight", dtype, {c.vocab_size, h}});
        out.push_back({p + "enorm.weight", dtype, {h}});
        out.push_back({p + "hnorm.weight", dtype, {h}});
        out.push_back({p + "eh_proj.weight", dtype, {h, 2 * h}});
        append_layer(out, c, layer, c.n_routed_experts > 0, dtype);
        out.push_back({p + "shared_head.norm.weight", dtype, {h}});
        out.push_back({p + "shared_head.head.weight", dtype, {c.vocab_size, h}});
    }
    out.push_back({"model.norm.weight", dtype, {h}});
    if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", dtype, {c.vocab_size, h}});
    return out;
}

double synth_weight_std(const SafetensorsTensorSpec& spec) {
    if (is_norm(spec.name)) return 0.0;
    if (ends_with(spec.name, "e_score_correction_bias")) return 0.01;  // a small nudge per expert
    if (ends_with(spec.name, "embed_tokens.weight")) return 1.0;       // RMSNorm follows at once
    const int64_t fan_in = spec.shape.empty() ? 1 : spec.shape.back();
    return 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
}

SynthSummary write_synthetic_model(const SynthOptions& options) {
    const ModelConfig& config = options.config;
    config.validate("synth config");
    const fs::path& dir = options.output_dir;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) fail(ErrorKind::io, "{}: cannot create directory: {}", dir.string(), ec.message());

    std::vector<SafetensorsTensorSpec> specs = synth_tensor_specs(config, options.weight_dtype);
    SynthSummary summary;
    summary.n_tensors = specs.size();

    // Split into shards in forward order, closing a shard before it would pass the limit.
    std::vector<std::vector<SafetensorsTensorSpec>> shards(1);
    uint64_t shard_bytes = 0;
    for (SafetensorsTensorSpec& spec : specs) {
        const uint64_t bytes = SafetensorsWriter::tensor_bytes(spec);
        summary.data_bytes += bytes;
        summary.n_parameters += bytes / (spec.dtype_name == "BF16" ? 2 : 4);
        if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
            shards.emplace_back();
            shard_bytes = 0;
        }
        shard_bytes += bytes;
        shards.back().push_back(std::move(spec));
    }
    summary.n_shards = shards.size();

    const fs::space_info space = fs::space(dir, ec);
    if (!ec && space.available < summary.data_bytes + (16u << 20))
        fail(ErrorKind::invalid_input, "{}: the model needs {:.2f} GB and only {:.2f} GB are free", dir.string(),
             summary.data_bytes / 1e9, space.available / 1e9);

    // Stale shards from an earlier, differently split run would confuse the reader.
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const std::string file = entry.path().filename().string();
        if (file == "model.safetensors.index.json" || (file.rfind("model", 0) == 0 && ends_with(file, ".safetensors")))
            fs::remove(entry.path());
    }

    nlohmann::json config_json = config.to_json();
    config_json["torch_dtype"] = options.weight_dtype == "BF16" ? "bfloat16" : "float32";
    write_text_file(dir / "config.json", config_json.dump(2) + "\n");
    nlohmann::json generation = {{"bos_token_id", config.bos_token_id}, {"eos_token_id", config.eos_token_id()}};
    write_text_file(dir / "generation_config.json", generation.dump(2) + "\n");

    std::vector<std::byte> chunk(1u << 20);
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    const std::map<std::string, std::string> metadata = {{"format", "pt"}};
    for (size_t s = 0; s < shards.size(); ++s) {
        const std::string file =
            shards.size() == 1 ? std::string("model.safetensors")
                               : fmt::format("model-{:05d}-of-{:06d}.safetensors", s + 1, shards.size());
        for (const SafetensorsTensorSpec& spec : shards[s]) weight_map[spec.name] = file;
        SafetensorsWriter writer(dir / file, shards[s], metadata);
        for (const SafetensorsTensorSpec& spec : shards[s]) write_tensor_values(writer, spec, options.seed, chunk);
        writer.finish();
    }
    if (shards.size() > 1) {
        nlohmann::ordered_json index = {{"metadata", {{"total_size", summary.data_bytes}}}, {"weight_map", weight_map}};
        write_text_file(dir / "model.safetensors.index.json", index.dump(2) + "\n");
    }

    if (options.tokenizer_dir) {
        const fs::path& from = *options.tokenizer_dir;
        if (!fs::is_regular_file(from / "tokenizer.json", ec))
            fail(ErrorKind::invalid_input, "{}: no tokenizer.json here", from.string());
        for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
            if (!fs::is_regular_file(from / name, ec)) continue;
            fs::copy_file(from / name, dir / name, fs::copy_options::overwrite_existing, ec);
            if (ec) fail(ErrorKind::io, "{}: cannot copy to {}: {}", (from / name).string(), dir.string(), ec.message());
            // The shared copy is read-only; the model directory's copy should not be.
            fs::permissions(dir / name, fs::perms::owner_write, fs::perm_options::add, ec);
        }
    }
    return summary;
}

std::optional<std::filesystem::path> find_default_tokenizer(const std::filesystem::path& start) {
    const fs::path relative = fs::path("models") / "deepseek-v3-tokenizer";
    std::error_code ec;
    if (const char* shared = std::getenv("SLUICE_SHARED"); shared != nullptr && *shared != '\0') {
        fs::path candidate = fs::path(shared) / relative;
        if (fs::is_regular_file(candidate / "tokenizer.json", ec)) return candidate;
    }
    fs::path dir = fs::weakly_canonical(start, ec);
    if (ec) dir = start;
    // The checkout sits beside shared/: walk up from the binary (build-x/engine/sluice) or source.
    while (!dir.empty()) {
        fs::path candidate = dir / "shared" / relative;
        if (fs::is_regular_file(candidate / "tokenizer.json", ec)) return candidate;
        if (dir == dir.parent_path()) break;
        dir = dir.parent_path();
    }
    return std::nullopt;
}

}  // namespace sluice
