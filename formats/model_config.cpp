// config.json -> ModelConfig. Defaults for absent keys follow transformers' DeepseekV3Config
// (deepseek_v3, kimi_k2) and DeepseekV2Config (deepseek_v2), checked against transformers 5.24.
#include "formats/model_config.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.hpp"

namespace sluice {

std::string_view topk_method_name(TopkMethod method) {
    switch (method) {
        case TopkMethod::noaux_tc: return "noaux_tc";
        case TopkMethod::group_limited_greedy: return "group_limited_greedy";
        case TopkMethod::greedy: return "greedy";
    }
    return "?";
}

std::string_view scoring_func_name(ScoringFunc func) {
    return func == ScoringFunc::sigmoid ? "sigmoid" : "softmax";
}

namespace {

using nlohmann::json;

// Typed field access: a wrong JSON type is an error naming the key, never a silent default.
struct FieldReader {
    const json& object;
    std::string_view source;

    const json* find(const char* key) const {
        auto it = object.find(key);
        return it == object.end() ? nullptr : &*it;
    }
    bool present(const char* key) const {
        const json* v = find(key);
        return v != nullptr && !v->is_null();
    }

    int64_t integer(const char* key, int64_t fallback) const {
        const json* v = find(key);
        if (v == nullptr || v->is_null()) return fallback;
        return as_integer(*v, key);
    }
    int64_t as_integer(const json& v, std::string_view key) const {
        if (v.is_number_integer()) return v.get<int64_t>();
        if (v.is_number_float()) {
            double d = v.get<double>();
            // Some exported configs write integral sizes as 4096.0.
            if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<int64_t>(d);
        }
        fail(ErrorKind::invalid_input, "{}: field '{}': expected an integer, found {}", source, key, v.dump());
    }
    double number(const char* key, double fallback) const {
        const json* v = find(key);
        if (v == nullptr || v->is_null()) return fallback;
        return as_number(*v, key);
    }
    double as_number(const json& v, std::string_view key) const {
        if (!v.is_number()) fail(ErrorKind::invalid_input, "{}: field '{}': expected a number, found {}", source, key, v.dump());
        return v.get<double>();
    }
    bool boolean(const char* key, bool fallback) const {
        const json* v = find(key);
        if (v == nullptr || v->is_null()) return fallback;
        if (!v->is_boolean()) fail(ErrorKind::invalid_input, "{}: field '{}': expected true/false, found {}", source, key, v->dump());
        return v->get<bool>();
    }
    std::string string(const char* key, std::string fallback) const {
        const json* v = find(key);
        if (v == nullptr || v->is_null()) return fallback;
        if (!v->is_string()) fail(ErrorKind::invalid_input, "{}: field '{}': expected a string, found {}", source, key, v->dump());
        return v->get<std::string>();
    }
    int int32(const char* key, int fallback) const {
        int64_t v = integer(key, fallback);
        if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
            fail(ErrorKind::invalid_input, "{}: field '{}': {} is out of range", source, key, v);
        return static_cast<int>(v);
    }
};

ModelConfig defaults_for(std::string_view model_type) {
    ModelConfig c;  // the struct's initialisers are DeepseekV3Config's defaults
    c.model_type = std::string(model_type);
    if (model_type == "deepseek_v2") {
        // DeepseekV2Config defaults (a 7B-ish dense-looking base; real V2 configs set every key).
        c.vocab_size = 102400;
        c.hidden_size = 4096;
        c.intermediate_size = 11008;
        c.n_layers = 32;
        c.n_heads = 32;
        c.max_position_embeddings = 2048;
        c.bos_token_id = 1;
        c.eos_token_ids = {2};
        c.first_k_dense_replace = 0;
        c.n_group = 1;     // transformers: None = no group limit
        c.topk_group = 1;
        c.n_routed_experts = 64;
        c.n_shared_experts = 2;
        c.routed_scaling_factor = 1.0;
        c.topk_method = TopkMethod::greedy;
        c.scoring_func = ScoringFunc::softmax;
        c.norm_topk_prob = false;
        c.moe_intermediate_size = 1407;
        c.num_experts_per_tok = 0;  // transformers: None; required when experts exist (validate)
        c.num_nextn_predict_layers = 0;
    }
    return c;
}

TopkMethod parse_topk_method(const std::string& s, std::string_view source) {
    if (s == "noaux_tc") return TopkMethod::noaux_tc;
    if (s == "group_limited_greedy") return TopkMethod::group_limited_greedy;
    if (s == "greedy") return TopkMethod::greedy;
    fail(ErrorKind::unsupported, "{}: field 'topk_method': '{}' is not one of noaux_tc, group_limited_greedy, greedy", source, s);
}

ScoringFunc parse_scoring_func(const std::string& s, std::string_view source) {
    if (s == "sigmoid") return ScoringFunc::sigmoid;
    if (s == "softmax") return ScoringFunc::softmax;
    fail(ErrorKind::unsupported, "{}: field 'scoring_func': '{}' is not one of sigmoid, softmax", source, s);
}

// rope_scaling (transformers 4) or rope_parameters (transformers 5 writes rope_theta inside it).
std::optional<YarnRopeScaling> parse_rope_scaling(const json& object, const char* key, std::string_view source) {
    if (!object.is_object()) fail(ErrorKind::invalid_input, "{}: field '{}': expected an object, found {}", source, key, object.dump());
    FieldReader r{object, source};
    std::string type = r.string("type", r.string("rope_type", "default"));
    if (type == "default") return std::nullopt;
    if (type != "yarn")
        fail(ErrorKind::unsupported, "{}: field '{}.type': '{}' is not supported (only yarn or none)", source, key, type);
    YarnRopeScaling y;
    y.factor = r.number("factor", y.factor);
    y.original_max_position_embeddings = r.integer("original_max_position_embeddings", y.original_max_position_embeddings);
    y.beta_fast = r.number("beta_fast", y.beta_fast);
    y.beta_slow = r.number("beta_slow", y.beta_slow);
    y.mscale = r.number("mscale", y.mscale);
    y.mscale_all_dim = r.number("mscale_all_dim", y.mscale_all_dim);
    return y;
}

}  // namespace

ModelConfig ModelConfig::parse(std::string_view json_text, std::string_view source) {
    json root = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded()) fail(ErrorKind::invalid_input, "{}: not well-formed JSON", source);
    if (!root.is_object()) fail(ErrorKind::invalid_input, "{}: expected a JSON object at top level", source);
    FieldReader r{root, source};

    if (!r.present("model_type")) fail(ErrorKind::invalid_input, "{}: field 'model_type' is missing", source);
    std::string model_type = r.string("model_type", "");
    if (model_type != "deepseek_v3" && model_type != "deepseek_v2" && model_type != "kimi_k2")
        fail(ErrorKind::unsupported, "{}: field 'model_type': '{}' is not supported (deepseek_v3, deepseek_v2, kimi_k2)",
             source, model_type);

    ModelConfig c = defaults_for(model_type);
    if (const json* a = r.find("architectures"); a != nullptr && a->is_array())
        for (const json& name : *a)
            if (name.is_string()) c.architectures.push_back(name.get<std::string>());

    c.vocab_size = r.integer("vocab_size", c.vocab_size);
    c.hidden_size = r.integer("hidden_size", c.hidden_size);
    c.n_layers = r.int32("num_hidden_layers", c.n_layers);
    c.first_k_dense_replace = r.int32("first_k_dense_replace", c.first_k_dense_replace);
    c.moe_layer_freq = r.int32("moe_layer_freq", c.moe_layer_freq);
    c.intermediate_size = r.integer("intermediate_size", c.intermediate_size);
    c.moe_intermediate_size = r.integer("moe_intermediate_size", c.moe_intermediate_size);
    // n_routed_experts: null means a dense model (every layer a dense MLP).
    if (const json* v = r.find("n_routed_experts"); v != nullptr)
        c.n_routed_experts = v->is_null() ? 0 : r.as_integer(*v, "n_routed_experts");
    c.n_shared_experts = r.integer("n_shared_experts", c.n_shared_experts);
    c.num_experts_per_tok = r.integer("num_experts_per_tok", c.num_experts_per_tok);
    c.n_group = r.integer("n_group", c.n_group);
    c.topk_group = r.integer("topk_group", c.topk_group);
    if (r.present("topk_method")) c.topk_method = parse_topk_method(r.string("topk_method", ""), source);
    if (r.present("scoring_func")) c.scoring_func = parse_scoring_func(r.string("scoring_func", ""), source);
    c.norm_topk_prob = r.boolean("norm_topk_prob", c.norm_topk_prob);
    c.routed_scaling_factor = r.number("routed_scaling_factor", c.routed_scaling_factor);

    c.n_heads = r.integer("num_attention_heads", c.n_heads);
    if (const json* v = r.find("q_lora_rank"); v != nullptr)
        c.q_lora_rank = v->is_null() ? std::nullopt : std::optional<int64_t>(r.as_integer(*v, "q_lora_rank"));
    c.kv_lora_rank = r.integer("kv_lora_rank", c.kv_lora_rank);
    c.qk_nope_head_dim = r.integer("qk_nope_head_dim", c.qk_nope_head_dim);
    c.qk_rope_head_dim = r.integer("qk_rope_head_dim", c.qk_rope_head_dim);
    c.v_head_dim = r.integer("v_head_dim", c.v_head_dim);

    c.rope_theta = r.number("rope_theta", c.rope_theta);
    if (r.present("rope_scaling")) c.rope_scaling = parse_rope_scaling(root["rope_scaling"], "rope_scaling", source);
    if (r.present("rope_parameters")) {
        const json& p = root["rope_parameters"];
        c.rope_scaling = parse_rope_scaling(p, "rope_parameters", source);
        if (p.contains("rope_theta")) c.rope_theta = r.as_number(p["rope_theta"], "rope_parameters.rope_theta");
    }
    c.max_position_embeddings = r.integer("max_position_embeddings", c.max_position_embeddings);
    c.rms_norm_eps = r.number("rms_norm_eps", c.rms_norm_eps);
    c.num_nextn_predict_layers = r.int32("num_nextn_predict_layers", c.num_nextn_predict_layers);
    c.tie_word_embeddings = r.boolean("tie_word_embeddings", c.tie_word_embeddings);
    c.bos_token_id = r.integer("bos_token_id", c.bos_token_id);
    if (const json* v = r.find("eos_token_id"); v != nullptr && !v->is_null()) {
        c.eos_token_ids.clear();
        if (v->is_array()) {
            for (const json& id : *v) c.eos_token_ids.push_back(r.as_integer(id, "eos_token_id"));
        } else {
            c.eos_token_ids.push_back(r.as_integer(*v, "eos_token_id"));
        }
    }
    c.torch_dtype = r.string("torch_dtype", r.string("dtype", ""));

    if (r.present("quantization_config")) {
        const json& q = root["quantization_config"];
        if (!q.is_object())
            fail(ErrorKind::invalid_input, "{}: field 'quantization_config': expected an object, found {}", source, q.dump());
        FieldReader qr{q, source};
        Fp8Quantization fp8;
        fp8.quant_method = qr.string("quant_method", "");
        if (fp8.quant_method != "fp8")
            fail(ErrorKind::unsupported, "{}: field 'quantization_config.quant_method': '{}' is not supported (only fp8)",
                 source, fp8.quant_method);
        fp8.fmt = qr.string("fmt", fp8.fmt);
        if (fp8.fmt != "e4m3")
            fail(ErrorKind::unsupported, "{}: field 'quantization_config.fmt': '{}' is not supported (only e4m3)", source, fp8.fmt);
        fp8.activation_scheme = qr.string("activation_scheme", fp8.activation_scheme);
        fp8.scale_fmt = qr.string("scale_fmt", "");
        if (!fp8.scale_fmt.empty() && fp8.scale_fmt != "ue8m0")
            fail(ErrorKind::unsupported, "{}: field 'quantization_config.scale_fmt': '{}' is not supported (ue8m0 or absent)",
                 source, fp8.scale_fmt);
        if (const json* b = qr.find("weight_block_size"); b != nullptr && !b->is_null()) {
            if (!b->is_array() || b->size() != 2)
                fail(ErrorKind::invalid_input, "{}: field 'quantization_config.weight_block_size': expected [rows, cols], found {}",
                     source, b->dump());
            fp8.weight_block_rows = qr.as_integer((*b)[0], "quantization_config.weight_block_size");
            fp8.weight_block_cols = qr.as_integer((*b)[1], "quantization_config.weight_block_size");
        }
        if (fp8.weight_block_rows != 128 || fp8.weight_block_cols != 128)
            fail(ErrorKind::unsupported, "{}: field 'quantization_config.weight_block_size': [{}, {}] is not supported (only [128, 128])",
                 source, fp8.weight_block_rows, fp8.weight_block_cols);
        c.quantization = fp8;
    }

    c.validate(source);
    return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
    std::filesystem::path file = path;
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) file = path / "config.json";
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        if (!std::filesystem::exists(file, ec))
            fail(ErrorKind::invalid_input, "{}: no config.json (a Hugging Face model directory needs one)", file.string());
        fail(ErrorKind::io, "{}: cannot open for reading", file.string());
    }
    std::ostringstream text;
    text << in.rdbuf();
    return parse(text.str(), file.string());
}

void ModelConfig::validate(std::string_view source) const {
    auto positive = [&](int64_t value, const char* field) {
        if (value <= 0) fail(ErrorKind::invalid_input, "{}: field '{}': must be > 0, found {}", source, field, value);
    };
    positive(vocab_size, "vocab_size");
    positive(hidden_size, "hidden_size");
    positive(n_layers, "num_hidden_layers");
    positive(n_heads, "num_attention_heads");
    positive(kv_lora_rank, "kv_lora_rank");
    positive(qk_nope_head_dim, "qk_nope_head_dim");
    positive(qk_rope_head_dim, "qk_rope_head_dim");
    positive(v_head_dim, "v_head_dim");
    positive(max_position_embeddings, "max_position_embeddings");
    if (q_lora_rank.has_value()) positive(*q_lora_rank, "q_lora_rank");
    if (qk_rope_head_dim % 2 != 0)
        fail(ErrorKind::invalid_input, "{}: field 'qk_rope_head_dim': must be even (RoPE rotates pairs), found {}", source,
             qk_rope_head_dim);
    if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps))
        fail(ErrorKind::invalid_input, "{}: field 'rms_norm_eps': must be > 0, found {}", source, rms_norm_eps);
    if (!(rope_theta > 0) || !std::isfinite(rope_theta))
        fail(ErrorKind::invalid_input, "{}: field 'rope_theta': must be > 0, found {}", source, rope_theta);
    if (first_k_dense_replace < 0)
        fail(ErrorKind::invalid_input, "{}: field 'first_k_dense_replace': must be >= 0, found {}", source, first_k_dense_replace);
    if (num_nextn_predict_layers < 0)
        fail(ErrorKind::invalid_input, "{}: field 'num_nextn_predict_layers': must be >= 0, found {}", source,
             num_nextn_predict_layers);
    if (n_routed_experts < 0)
        fail(ErrorKind::invalid_input, "{}: field 'n_routed_experts': must be >= 0, found {}", source, n_routed_experts);

    bool any_dense = n_routed_experts == 0 || first_k_dense_replace > 0 || moe_layer_freq > 1;
    if (any_dense) positive(intermediate_size, "intermediate_size");
    if (n_routed_experts > 0) {
        positive(moe_layer_freq, "moe_layer_freq");
        positive(moe_intermediate_size, "moe_intermediate_size");
        if (n_shared_experts < 0)
            fail(ErrorKind::invalid_input, "{}: field 'n_shared_experts': must be >= 0, found {}", source, n_shared_experts);
        if (num_experts_per_tok <= 0 || num_experts_per_tok > n_routed_experts)
            fail(ErrorKind::invalid_input, "{}: field 'num_experts_per_tok': must be in 1..n_routed_experts ({}), found {}",
                 source, n_routed_experts, num_experts_per_tok);
        positive(n_group, "n_group");
        if (n_routed_experts % n_group != 0)
            fail(ErrorKind::invalid_input, "{}: field 'n_group': n_routed_experts ({}) is not divisible by n_group ({})", source,
                 n_routed_experts, n_group);
        if (topk_group <= 0 || topk_group > n_group)
            fail(ErrorKind::invalid_input, "{}: field 'topk_group': must be in 1..n_group ({}), found {}", source, n_group,
                 topk_group);
        // Group-limited selection must leave at least top-k experts to choose from.
        if (topk_method != TopkMethod::greedy && topk_group * (n_routed_experts / n_group) < num_experts_per_tok)
            fail(ErrorKind::invalid_input,
                 "{}: field 'topk_group': {} groups of {} experts hold fewer than num_experts_per_tok ({})", source, topk_group,
                 n_routed_experts / n_group, num_experts_per_tok);
        if (!(routed_scaling_factor > 0) || !std::isfinite(routed_scaling_factor))
            fail(ErrorKind::invalid_input, "{}: field 'routed_scaling_factor': must be > 0, found {}", source,
                 routed_scaling_factor);
    }
    if (rope_scaling) {
        if (!(rope_scaling->factor > 0))
            fail(ErrorKind::invalid_input, "{}: field 'rope_scaling.factor': must be > 0, found {}", source, rope_scaling->factor);
        positive(rope_scaling->original_max_position_embeddings, "rope_scaling.original_max_position_embeddings");
    }
    if (bos_token_id < 0 || bos_token_id >= vocab_size)
        fail(ErrorKind::invalid_input, "{}: field 'bos_token_id': {} is outside the vocabulary (0..{})", source, bos_token_id,
             vocab_size - 1);
    for (int64_t eos : eos_token_ids)
        if (eos < 0 || eos >= vocab_size)
            fail(ErrorKind::invalid_input, "{}: field 'eos_token_id': {} is outside the vocabulary (0..{})", source, eos,
                 vocab_size - 1);
}

nlohmann::json ModelConfig::to_json() const {
    json j;
    j["architectures"] = architectures.empty()
                             ? json::array({model_type == "deepseek_v2" ? "DeepseekV2ForCausalLM" : "DeepseekV3ForCausalLM"})
                             : json(architectures);
    j["model_type"] = model_type;
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = hidden_size;
    j["num_hidden_layers"] = n_layers;
    j["first_k_dense_replace"] = first_k_dense_replace;
    j["moe_layer_freq"] = moe_layer_freq;
    j["intermediate_size"] = intermediate_size;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["n_routed_experts"] = n_routed_experts == 0 ? json(nullptr) : json(n_routed_experts);
    j["n_shared_experts"] = n_shared_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["topk_method"] = topk_method_name(topk_method);
    j["scoring_func"] = scoring_func_name(scoring_func);
    j["norm_topk_prob"] = norm_topk_prob;
    j["routed_scaling_factor"] = routed_scaling_factor;
    j["num_attention_heads"] = n_heads;
    j["num_key_value_heads"] = n_heads;
    j["q_lora_rank"] = q_lora_rank ? json(*q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_nope_head_dim"] = qk_nope_head_dim;
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["v_head_dim"] = v_head_dim;
    j["rope_theta"] = rope_theta;
    if (rope_scaling) {
        j["rope_scaling"] = {{"type", "yarn"},
                             {"factor", rope_scaling->factor},
                             {"original_max_position_embeddings", rope_scaling->original_max_position_embeddings},
                             {"beta_fast", rope_scaling->beta_fast},
                             {"beta_slow", rope_scaling->beta_slow},
                             {"mscale", rope_scaling->mscale},
                             {"mscale_all_dim", rope_scaling->mscale_all_dim}};
    } else {
        j["rope_scaling"] = nullptr;
    }
    j["max_position_embeddings"] = max_position_embeddings;
    j["rms_norm_eps"] = rms_norm_eps;
    j["num_nextn_predict_layers"] = num_nextn_predict_layers;
    j["tie_word_embeddings"] = tie_word_embeddings;
    j["bos_token_id"] = bos_token_id;
    j["eos_token_id"] = eos_token_ids.size() == 1 ? json(eos_token_ids.front()) : json(eos_token_ids);
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    if (!torch_dtype.empty()) j["torch_dtype"] = torch_dtype;
    if (quantization) {
        json q = {{"quant_method", quantization->quant_method},
                  {"fmt", quantization->fmt},
                  {"activation_scheme", quantization->activation_scheme},
                  {"weight_block_size", {quantization->weight_block_rows, quantization->weight_block_cols}}};
        if (!quantization->scale_fmt.empty()) q["scale_fmt"] = quantization->scale_fmt;
        j["quantization_config"] = q;
    }
    return j;
}

ModelConfig ModelConfig::deepseek_v3_671b() {
    ModelConfig c;
    c.architectures = {"DeepseekV3ForCausalLM"};
    c.rope_scaling = YarnRopeScaling{40.0, 4096, 32.0, 1.0, 1.0, 1.0};
    c.max_position_embeddings = 163840;
    c.quantization = Fp8Quantization{};
    c.torch_dtype = "bfloat16";
    return c;
}

ModelConfig ModelConfig::deepseek_v3_1() {
    ModelConfig c = deepseek_v3_671b();
    c.quantization->scale_fmt = "ue8m0";
    return c;
}

ModelConfig ModelConfig::deepseek_v2_236b() {
    ModelConfig c = defaults_for("deepseek_v2");
    c.architectures = {"DeepseekV2ForCausalLM"};
    c.vocab_size = 102400;
    c.hidden_size = 5120;
    c.n_layers = 60;
    c.first_k_dense_replace = 1;
    c.intermediate_size = 12288;
    c.moe_intermediate_size = 1536;
    c.n_routed_experts = 160;
    c.n_shared_experts = 2;
    c.num_experts_per_tok = 6;
    c.n_group = 8;
    c.topk_group = 3;
    c.topk_method = TopkMethod::group_limited_greedy;
    c.scoring_func = ScoringFunc::softmax;
    c.norm_topk_prob = false;
    c.routed_scaling_factor = 16.0;
    c.n_heads = 128;
    c.q_lora_rank = 1536;
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 128;
    c.rope_scaling = YarnRopeScaling{40.0, 4096, 32.0, 1.0, 0.707, 0.707};
    c.max_position_embeddings = 163840;
    c.bos_token_id = 100000;
    c.eos_token_ids = {100001};
    c.torch_dtype = "bfloat16";
    return c;
}

ModelConfig ModelConfig::deepseek_v2_lite() {
    // V2-Lite is V2 shrunk: no q LoRA, 16 heads, 64 experts in one group, plain greedy top-k.
    ModelConfig c = deepseek_v2_236b();
    c.hidden_size = 2048;
    c.n_layers = 27;
    c.intermediate_size = 10944;
    c.moe_intermediate_size = 1408;
    c.n_routed_experts = 64;
    c.n_group = 1;
    c.topk_group = 1;
    c.topk_method = TopkMethod::greedy;
    c.routed_scaling_factor = 1.0;
    c.n_heads = 16;
    c.q_lora_rank = std::nullopt;
    return c;
}

ModelConfig ModelConfig::kimi_k2() {
    ModelConfig c;
    c.model_type = "kimi_k2";
    c.architectures = {"DeepseekV3ForCausalLM"};
    c.vocab_size = 163840;
    c.first_k_dense_replace = 1;
    c.n_routed_experts = 384;
    c.n_group = 1;
    c.topk_group = 1;
    c.routed_scaling_factor = 2.827;
    c.n_heads = 64;
    c.rope_theta = 50000.0;
    c.rope_scaling = YarnRopeScaling{32.0, 4096, 1.0, 1.0, 1.0, 1.0};
    c.max_position_embeddings = 131072;
    c.num_nextn_predict_layers = 0;
    c.bos_token_id = 163584;
    c.eos_token_ids = {163585};
    c.quantization = Fp8Quantization{};
    c.torch_dtype = "bfloat16";
    return c;
}

}  // namespace sluice
