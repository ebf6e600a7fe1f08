// The tensor set mirrors what llama.cpp's convert_hf_to_gguf.py writes for DeepSeek-V3 (see
// tests/data/llamacpp/*.gguf), but in layer order. Writing is a two-buffer pipeline: the pool
// fills chunk i+1 while one writer thread writes chunk i with large sequential writes.
#include "engine/synth_gguf.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/synth.hpp"
#include "formats/gguf_writer.hpp"

namespace sluice {

namespace {

namespace fs = std::filesystem;
using gguf::KeyValue;
using gguf::Value;
using gguf::ValueType;

constexpr uint64_t kAlignmentBytes = 4096;

uint64_t fnv1a(std::string_view s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
    return h;
}

uint64_t tensor_seed(uint64_t seed, std::string_view name) {
    uint64_t z = seed ^ fnv1a(name);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double projection_std(int64_t fan_in) { return 1.0 / std::sqrt(double(std::max<int64_t>(fan_in, 1))); }

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(ErrorKind::io, "{}: cannot open", path.string());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// llama.cpp's does_token_look_special, the part that concerns DeepSeek vocabularies.
bool looks_special(const std::string& t) {
    auto wrapped = [&](std::string_view open, std::string_view close) {
        return t.size() >= open.size() + close.size() && t.compare(0, open.size(), open) == 0 &&
               t.compare(t.size() - close.size(), close.size(), close) == 0;
    };
    return t == "<pad>" || t == "<mask>" || wrapped("<|", "|>") || wrapped("<｜", "｜>") || wrapped("<unused", ">");
}

// llama_ftype for general.file_type, named after the expert type (most of the bytes).
uint32_t file_type_for(DType expert_type) {
    switch (expert_type) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q8_0: return 7;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 12;   // Q3_K_M
    case DType::Q4_K: return 15;   // Q4_K_M
    case DType::Q5_K: return 17;   // Q5_K_M
    case DType::Q6_K: return 18;
    case DType::BF16: return 32;
    default: return 0;
    }
}

Value string_array(std::vector<std::string> items) {
    std::vector<Value> values;
    values.reserve(items.size());
    for (auto& s : items) values.push_back(Value::of_string(std::move(s)));
    return Value::of_array(ValueType::string, std::move(values));
}

}  // namespace

uint64_t GgufSynthTensor::size_bytes() const {
    uint64_t n = uint64_t(row_bytes(type, ne.at(0)));
    for (size_t d = 1; d < ne.size(); ++d) n *= uint64_t(ne[d]);
    return n;
}

DType parse_synth_dtype(std::string_view name) {
    std::string upper(name);
    for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                    DType::Q4_K, DType::Q5_K, DType::Q6_K})
        if (dtype_name(t) == upper) return t;
    fail(ErrorKind::invalid_input, "synth: type '{}' is not one of f32, f16, bf16, q4_0, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k",
         name);
}

ModelConfig synth_gguf_config(std::string_view preset, std::optional<int> layers, std::optional<int> dense_layers,
                              std::optional<int64_t> experts) {
    ModelConfig c = synth_preset(preset);
    c.num_nextn_predict_layers = 0;  // llama.cpp and sluice decode without MTP
    if (layers) c.n_layers = *layers;
    if (dense_layers) {
        if (*dense_layers > c.n_layers)
            fail(ErrorKind::invalid_input, "synth: --dense-layers {} is more than --layers {}", *dense_layers, c.n_layers);
        c.first_k_dense_replace = *dense_layers;
    } else {
        // Keep at least one MoE layer when there is more than one layer.
        c.first_k_dense_replace = std::min(c.first_k_dense_replace, std::max(c.n_layers - 1, 0));
    }
    if (experts) {
        c.n_routed_experts = *experts;
        c.num_experts_per_tok = std::min(c.num_experts_per_tok, *experts);
        // Keep the preset's grouping when the experts still divide into it, the chosen groups hold
        // top-k experts, and (llama.cpp asserts it) groups < experts; otherwise route without groups.
        const bool grouping_fits = c.n_group > 1 && c.n_routed_experts % c.n_group == 0 && c.n_group < c.n_routed_experts &&
                                   c.topk_group * (c.n_routed_experts / c.n_group) >= c.num_experts_per_tok;
        if (!grouping_fits) c.n_group = c.topk_group = 1;
    }
    return c;
}

std::vector<GgufSynthTensor> synth_gguf_tensors(const GgufSynthOptions& o) {
    const ModelConfig& c = o.config;
    c.validate("synth config");
    if (c.n_routed_experts > 0 && c.n_group > 1 && c.n_group >= c.n_routed_experts)
        fail(ErrorKind::invalid_input, "synth: {} expert groups for {} experts; llama.cpp needs fewer groups than experts",
             c.n_group, c.n_routed_experts);
    std::vector<GgufSynthTensor> out;
    const int64_t h = c.hidden_size;
    auto matrix = [&](std::string name, DType type, std::vector<int64_t> ne, int64_t fan_in) {
        out.push_back({std::move(name), type, std::move(ne), RandomFill::gaussian_like, projection_std(fan_in)});
    };
    auto norm = [&](std::string name, int64_t n) { out.push_back({std::move(name), DType::F32, {n}, RandomFill::ones, 0}); };

    // The embedding is read row by row and RMS-normed at once: std 1 as the HF synth.
    out.push_back({"token_embd.weight", o.embed_type, {h, c.vocab_size}, RandomFill::gaussian_like, 1.0});
    for (int layer = 0; layer < c.n_layers; ++layer) {
        const std::string p = fmt::format("blk.{}.", layer);
        norm(p + "attn_norm.weight", h);
        if (c.q_lora_rank) {
            matrix(p + "attn_q_a.weight", o.dense_type, {h, *c.q_lora_rank}, h);
            norm(p + "attn_q_a_norm.weight", *c.q_lora_rank);
            matrix(p + "attn_q_b.weight", o.dense_type, {*c.q_lora_rank, c.n_heads * c.qk_head_dim()}, *c.q_lora_rank);
        } else {
            matrix(p + "attn_q.weight", o.dense_type, {h, c.n_heads * c.qk_head_dim()}, h);
        }
        matrix(p + "attn_kv_a_mqa.weight", o.dense_type, {h, c.kv_lora_rank + c.qk_rope_head_dim}, h);
        norm(p + "attn_kv_a_norm.weight", c.kv_lora_rank);
        // k_b / v_b are kv_b_proj split per head (fan-in kv_lora_rank in the HF weight).
        DType k_b_type = o.dense_type;
        if (!row_fits_blocks(k_b_type, c.qk_nope_head_dim))
            k_b_type = row_fits_blocks(DType::Q8_0, c.qk_nope_head_dim) ? DType::Q8_0 : DType::F16;
        matrix(p + "attn_k_b.weight", k_b_type, {c.qk_nope_head_dim, c.kv_lora_rank, c.n_heads}, c.kv_lora_rank);
        matrix(p + "attn_v_b.weight", o.dense_type, {c.kv_lora_rank, c.v_head_dim, c.n_heads}, c.kv_lora_rank);
        matrix(p + "attn_output.weight", o.dense_type, {c.n_heads * c.v_head_dim, h}, c.n_heads * c.v_head_dim);
        norm(p + "ffn_norm.weight", h);
        if (!c.is_moe_layer(layer)) {
            matrix(p + "ffn_gate.weight", o.dense_type, {h, c.intermediate_size}, h);
            matrix(p + "ffn_up.weight", o.dense_type, {h, c.intermediate_size}, h);
            matrix(p + "ffn_down.weight", o.dense_type, {c.intermediate_size, h}, c.intermediate_size);
            continue;
        }
        matrix(p + "ffn_gate_inp.weight", DType::F32, {h, c.n_routed_experts}, h);
        if (c.topk_method == TopkMethod::noaux_tc)  // a small nudge per expert, as the HF synth
            out.push_back({p + "exp_probs_b.bias", DType::F32, {c.n_routed_experts}, RandomFill::gaussian_like, 0.01});
        if (c.n_shared_experts > 0) {
            const int64_t shared = c.moe_intermediate_size * c.n_shared_experts;
            matrix(p + "ffn_gate_shexp.weight", o.dense_type, {h, shared}, h);
            matrix(p + "ffn_up_shexp.weight", o.dense_type, {h, shared}, h);
            matrix(p + "ffn_down_shexp.weight", o.dense_type, {shared, h}, shared);
        }
        const int64_t e = c.n_routed_experts, f = c.moe_intermediate_size;
        matrix(p + "ffn_gate_exps.weight", o.expert_type, {h, f, e}, h);
        matrix(p + "ffn_up_exps.weight", o.expert_type, {h, f, e}, h);
        matrix(p + "ffn_down_exps.weight", o.expert_type, {f, h, e}, f);
    }
    norm("output_norm.weight", h);
    if (!c.tie_word_embeddings) matrix("output.weight", o.head_type, {h, c.vocab_size}, h);

    for (const GgufSynthTensor& t : out) {
        if (!random_blocks_supported(t.type))
            fail(ErrorKind::invalid_input, "synth: tensor '{}': type {} has no random-block generator", t.name,
                 dtype_name(t.type));
        if (!row_fits_blocks(t.type, t.ne[0]))
            fail(ErrorKind::invalid_input,
                 "synth: tensor '{}': type {} needs rows that are a multiple of {} values, and ne[0] is {}; choose another "
                 "type or shape",
                 t.name, dtype_name(t.type), block_type(t.type).block_elems, t.ne[0]);
    }
    return out;
}

std::vector<KeyValue> synth_gguf_hparams(const ModelConfig& c) {
    std::vector<KeyValue> kv;
    auto u32 = [&](const char* key, int64_t v) { kv.push_back({fmt::format("deepseek2.{}", key), Value::of_u32(uint32_t(v))}); };
    auto f32 = [&](const char* key, double v) { kv.push_back({fmt::format("deepseek2.{}", key), Value::of_f32(float(v))}); };
    u32("block_count", c.n_layers);
    u32("context_length", c.max_position_embeddings);
    u32("embedding_length", c.hidden_size);
    u32("feed_forward_length", c.intermediate_size);
    u32("attention.head_count", c.n_heads);
    u32("attention.head_count_kv", 1);  // MLA-era: one latent "head" of kv_lora + rope
    if (c.rope_scaling) {
        kv.push_back({"deepseek2.rope.scaling.type", Value::of_string("yarn")});
        f32("rope.scaling.factor", c.rope_scaling->factor);
        u32("rope.scaling.original_context_length", c.rope_scaling->original_max_position_embeddings);
        f32("rope.scaling.yarn_beta_fast", c.rope_scaling->beta_fast);
        f32("rope.scaling.yarn_beta_slow", c.rope_scaling->beta_slow);
    }
    f32("rope.freq_base", c.rope_theta);
    f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
    u32("expert_count", c.n_routed_experts);
    u32("expert_used_count", c.num_experts_per_tok);
    u32("expert_group_count", c.n_group);
    u32("expert_group_used_count", c.topk_group);
    u32("expert_gating_func", c.scoring_func == ScoringFunc::sigmoid ? 2 : 1);
    u32("attention.key_length", c.kv_lora_rank + c.qk_rope_head_dim);
    u32("attention.value_length", c.kv_lora_rank);
    u32("leading_dense_block_count", c.first_k_dense_replace);
    u32("vocab_size", c.vocab_size);
    if (c.q_lora_rank) u32("attention.q_lora_rank", *c.q_lora_rank);
    u32("attention.kv_lora_rank", c.kv_lora_rank);
    u32("attention.key_length_mla", c.qk_head_dim());
    u32("attention.value_length_mla", c.v_head_dim);
    u32("expert_feed_forward_length", c.moe_intermediate_size);
    u32("expert_shared_count", c.n_shared_experts);
    f32("expert_weights_scale", c.routed_scaling_factor);
    kv.push_back({"deepseek2.expert_weights_norm", Value::of_bool(c.norm_topk_prob)});
    u32("rope.dimension_count", c.qk_rope_head_dim);
    if (c.rope_scaling) f32("rope.scaling.yarn_log_multiplier", 0.1 * c.rope_scaling->mscale_all_dim);
    return kv;
}

std::vector<KeyValue> gguf_tokenizer_metadata(const fs::path& dir, int64_t vocab_size) {
    const fs::path json_path = dir / "tokenizer.json";
    nlohmann::json tok;
    try {
        tok = nlohmann::json::parse(read_text(json_path));
    } catch (const nlohmann::json::exception& e) {
        fail(ErrorKind::invalid_input, "{}: not JSON: {}", json_path.string(), e.what());
    }
    if (!tok.contains("model") || !tok["model"].contains("vocab") || !tok["model"].contains("merges"))
        fail(ErrorKind::invalid_input, "{}: no model.vocab / model.merges (only BPE tokenizers)", json_path.string());

    std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
    std::vector<int32_t> types(static_cast<size_t>(vocab_size), 0);  // 0: not yet seen
    auto place = [&](int64_t id, std::string text, int32_t type) {
        if (id < 0 || id >= vocab_size)
            fail(ErrorKind::invalid_input, "{}: token id {} ('{}') does not fit vocab_size {}", json_path.string(), id, text,
                 vocab_size);
        tokens[size_t(id)] = std::move(text);
        types[size_t(id)] = type;
    };
    for (const auto& [text, id] : tok["model"]["vocab"].items()) place(id.get<int64_t>(), text, 1);  // NORMAL
    if (tok.contains("added_tokens")) {
        for (const auto& added : tok["added_tokens"]) {
            std::string text = added.at("content").get<std::string>();
            const bool special = added.value("special", false) || looks_special(text);
            if (!special) {
                // llama.cpp pre-normalises user-defined tokens' "▁" to spaces.
                for (size_t at; (at = text.find("\xe2\x96\x81")) != std::string::npos;) text.replace(at, 3, " ");
            }
            place(added.at("id").get<int64_t>(), std::move(text), special ? 3 : 4);  // CONTROL / USER_DEFINED
        }
    }
    std::vector<Value> type_values;
    type_values.reserve(types.size());
    for (size_t id = 0; id < types.size(); ++id) {
        if (types[id] == 0) {
            tokens[id] = fmt::format("[PAD{}]", id);
            types[id] = 5;  // UNUSED
        }
        type_values.push_back(Value::of_i32(types[id]));
    }
    std::vector<std::string> merges;
    merges.reserve(tok["model"]["merges"].size());
    for (const auto& m : tok["model"]["merges"]) {
        if (m.is_string()) merges.push_back(m.get<std::string>());
        else merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }

    // bos / eos as the tokenizer_config names them (DeepSeek-V3: ids 0 and 1).
    int64_t bos_id = 0, eos_id = 1;
    bool add_bos = true, add_eos = false;
    std::string chat_template;
    const fs::path config_path = dir / "tokenizer_config.json";
    std::error_code ec;
    if (fs::is_regular_file(config_path, ec)) {
        nlohmann::json cfg;
        try {
            cfg = nlohmann::json::parse(read_text(config_path));
        } catch (const nlohmann::json::exception& e) {
            fail(ErrorKind::invalid_input, "{}: not JSON: {}", config_path.string(), e.what());
        }
        auto id_of = [&](const char* key, int64_t fallback) {
            if (!cfg.contains(key) || cfg[key].is_null()) return fallback;
            const std::string text = cfg[key].is_string() ? cfg[key].get<std::string>() : cfg[key].value("content", "");
            for (size_t id = 0; id < tokens.size(); ++id)
                if (tokens[id] == text) return int64_t(id);
            return fallback;
        };
        bos_id = id_of("bos_token", bos_id);
        eos_id = id_of("eos_token", eos_id);
        add_bos = cfg.value("add_bos_token", add_bos);
        add_eos = cfg.value("add_eos_token", add_eos);
        if (cfg.contains("chat_template") && cfg["chat_template"].is_string()) chat_template = cfg["chat_template"];
    }

    std::vector<KeyValue> kv;
    kv.push_back({"tokenizer.ggml.model", Value::of_string("gpt2")});
    kv.push_back({"tokenizer.ggml.pre", Value::of_string("deepseek-v3")});
    kv.push_back({"tokenizer.ggml.tokens", string_array(std::move(tokens))});
    kv.push_back({"tokenizer.ggml.token_type", Value::of_array(ValueType::i32, std::move(type_values))});
    kv.push_back({"tokenizer.ggml.merges", string_array(std::move(merges))});
    kv.push_back({"tokenizer.ggml.bos_token_id", Value::of_u32(uint32_t(bos_id))});
    kv.push_back({"tokenizer.ggml.eos_token_id", Value::of_u32(uint32_t(eos_id))});
    kv.push_back({"tokenizer.ggml.add_bos_token", Value::of_bool(add_bos)});
    kv.push_back({"tokenizer.ggml.add_eos_token", Value::of_bool(add_eos)});
    if (!chat_template.empty()) kv.push_back({"tokenizer.chat_template", Value::of_string(std::move(chat_template))});
    return kv;
}

GgufSynthSummary write_synthetic_gguf(const GgufSynthOptions& o) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<GgufSynthTensor> tensors = synth_gguf_tensors(o);
    GgufSynthSummary summary;
    summary.n_tensors = tensors.size();
    uint64_t data_bytes = 0;
    for (const auto& t : tensors) {
        data_bytes += (t.size_bytes() + kAlignmentBytes - 1) / kAlignmentBytes * kAlignmentBytes;
        int64_t n = 1;
        for (int64_t d : t.ne) n *= d;
        summary.n_parameters += uint64_t(n);
    }
    std::vector<KeyValue> tokenizer = gguf_tokenizer_metadata(o.tokenizer_dir, o.config.vocab_size);

    const fs::path target = o.output_path;
    const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
    std::error_code ec;
    const fs::space_info space = fs::space(parent, ec);
    if (!ec && space.available < data_bytes + (64u << 20))
        fail(ErrorKind::invalid_input, "{}: the model needs {:.2f} GB and only {:.2f} GB are free", target.string(),
             data_bytes / 1e9, space.available / 1e9);
    const fs::path partial = target.string() + ".partial";

    // A failed run leaves no half-written model behind.
    struct RemoveUnlessKept {
        fs::path path;
        bool keep = false;
        ~RemoveUnlessKept() {
            std::error_code ignored;
            if (!keep) fs::remove(path, ignored);
        }
    } remove_partial{partial};
    gguf::GgufWriter writer(partial.string(), kAlignmentBytes);
    writer.add_metadata("general.architecture", Value::of_string("deepseek2"));
    writer.add_metadata("general.type", Value::of_string("model"));
    writer.add_metadata("general.name", Value::of_string(o.model_name));
    for (auto& kv : synth_gguf_hparams(o.config)) writer.add_metadata(std::move(kv.key), std::move(kv.value));
    for (auto& kv : tokenizer) writer.add_metadata(std::move(kv.key), std::move(kv.value));
    writer.add_metadata("general.quantization_version", Value::of_u32(2));
    writer.add_metadata("general.file_type", Value::of_u32(file_type_for(o.expert_type)));
    for (const auto& t : tensors) writer.add_tensor(t.name, t.type, t.ne);
    writer.write_header();
    writer.close_after_header();
    tokenizer.clear();
    const uint64_t file_bytes = writer.file_size_bytes();

    // The data section: every tensor starts on a 4096 boundary and every write is a whole
    // number of 4096-byte pages from an aligned buffer, so O_DIRECT applies (the page cache is
    // neither a copy on the way nor filled with a model nobody reads yet). Filesystems that
    // refuse O_DIRECT (tmpfs) get plain writes.
    int fd = ::open(partial.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0 && errno == EINVAL) fd = ::open(partial.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail(ErrorKind::io, "{}: cannot open for writing: {}", partial.string(), std::strerror(errno));
    struct CloseFd {
        int fd;
        ~CloseFd() { ::close(fd); }
    } close_fd{fd};
    if (::ftruncate(fd, off_t(file_bytes)) != 0)
        fail(ErrorKind::io, "{}: cannot size to {} bytes: {}", partial.string(), file_bytes, std::strerror(errno));

    ThreadPool pool(o.n_threads);
    const uint64_t chunk_bytes = std::max<uint64_t>(o.chunk_bytes / kAlignmentBytes * kAlignmentBytes, 1u << 20);
    AlignedBuffer buffers[2] = {AlignedBuffer(chunk_bytes, kAlignmentBytes), AlignedBuffer(chunk_bytes, kAlignmentBytes)};
    int next_buffer = 0;
    std::future<void> in_flight;  // the one write that may overlap generation
    auto write_at = [&partial, fd](const uint8_t* bytes, uint64_t n, uint64_t offset) {
        while (n > 0) {
            const ssize_t done = ::pwrite(fd, bytes, n, off_t(offset));
            if (done < 0 && errno == EINTR) continue;
            if (done <= 0)
                fail(ErrorKind::io, "{}: write of {} bytes at offset {} failed: {}", partial.string(), n, offset,
                     done < 0 ? std::strerror(errno) : "no progress");
            bytes += done;
            offset += uint64_t(done);
            n -= uint64_t(done);
        }
    };

    uint64_t bytes_done = 0;
    auto last_print = start;
    // One line rewritten in place on a terminal; one line per report in a log file.
    const char* line_start = ::isatty(STDERR_FILENO) ? "\r" : "";
    const char* line_end = ::isatty(STDERR_FILENO) ? "" : "\n";
    auto report = [&](bool final_line) {
        const auto now = std::chrono::steady_clock::now();
        if (!o.print_progress || (!final_line && now - last_print < std::chrono::seconds(1))) return;
        last_print = now;
        const double s = std::chrono::duration<double>(now - start).count();
        fmt::print(stderr, "{}synth: {:.2f} / {:.2f} GB, {:.2f} GB/s{}", line_start, bytes_done / 1e9, file_bytes / 1e9,
                   s > 0 ? bytes_done / 1e9 / s : 0.0, final_line && *line_end == '\0' ? "\n" : line_end);
        std::fflush(stderr);
    };

    for (size_t index = 0; index < tensors.size(); ++index) {
        const GgufSynthTensor& t = tensors[index];
        const BlockTypeTraits& traits = block_type(t.type);
        const uint64_t block_bytes = uint64_t(traits.block_bytes);
        int64_t n_elements = 1;
        for (int64_t d : t.ne) n_elements *= d;
        const int64_t n_blocks = n_elements / traits.block_elems;
        // Chunks inside a tensor end on page boundaries: a multiple of lcm(block, page) bytes.
        const uint64_t unit = std::lcm(block_bytes, kAlignmentBytes);
        if (unit > chunk_bytes) fail(ErrorKind::internal, "synth: chunk {} bytes below one unit of {}", chunk_bytes, unit);
        const int64_t blocks_per_chunk = int64_t(chunk_bytes / unit * unit / block_bytes);
        const uint64_t seed = tensor_seed(o.seed, t.name);
        uint64_t offset = writer.tensor_offset(index);
        for (int64_t first = 0; first < n_blocks; first += blocks_per_chunk) {
            const int64_t count = std::min(blocks_per_chunk, n_blocks - first);
            uint8_t* dst = reinterpret_cast<uint8_t*>(buffers[next_buffer].data());
            pool.parallel_for(
                count,
                [&](int64_t begin, int64_t end, int) {
                    fill_random_blocks(t.type, t.fill, t.std, seed, uint64_t(first + begin), dst + begin * block_bytes,
                                       end - begin);
                },
                /*grain=*/256);
            // The tensor's last chunk carries the zero padding to the next tensor's page.
            const uint64_t data = uint64_t(count) * block_bytes;
            const uint64_t padded = (data + kAlignmentBytes - 1) / kAlignmentBytes * kAlignmentBytes;
            std::memset(dst + data, 0, padded - data);
            if (in_flight.valid()) in_flight.get();  // rethrows a failed write
            in_flight = std::async(std::launch::async, [&write_at, dst, padded, offset] { write_at(dst, padded, offset); });
            offset += padded;
            next_buffer ^= 1;
            bytes_done += padded;
            report(false);
        }
    }
    if (in_flight.valid()) in_flight.get();
    if (::fsync(fd) != 0) fail(ErrorKind::io, "{}: fsync failed: {}", partial.string(), std::strerror(errno));
    fs::rename(partial, target, ec);
    remove_partial.keep = !ec;
    if (ec) fail(ErrorKind::io, "{}: cannot rename to {}: {}", partial.string(), target.string(), ec.message());
    bytes_done = file_bytes;
    summary.file_bytes = fs::file_size(target, ec);
    summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report(true);
    return summary;
}

}  // namespace sluice
