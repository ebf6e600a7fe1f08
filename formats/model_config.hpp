// A Hugging Face config.json of the DeepSeek-V3 family (V3/R1/V3.1, Kimi K2, V2, V2-Lite) as a
// typed record (spec §1). Parsed once when a model is opened; ModelLayout derives from it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace sluice {

enum class TopkMethod { noaux_tc, group_limited_greedy, greedy };
enum class ScoringFunc { sigmoid, softmax };

std::string_view topk_method_name(TopkMethod method);
std::string_view scoring_func_name(ScoringFunc func);

// rope_scaling {"type": "yarn", ...} (spec §2.5).
struct YarnRopeScaling {
    double factor = 1.0;
    int64_t original_max_position_embeddings = 4096;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 0.0;
};

// quantization_config of the official FP8 release (spec §1.1, §3.3).
struct Fp8Quantization {
    std::string quant_method = "fp8";
    std::string fmt = "e4m3";
    std::string activation_scheme = "dynamic";
    int64_t weight_block_rows = 128;
    int64_t weight_block_cols = 128;
    std::string scale_fmt;  // "" (V3/R1) or "ue8m0" (V3.1: power-of-two activation scales)
};

struct ModelConfig {
    std::string model_type = "deepseek_v3";  // deepseek_v3 / deepseek_v2 / kimi_k2
    std::vector<std::string> architectures;

    int64_t vocab_size = 129280;
    int64_t hidden_size = 7168;
    int n_layers = 61;  // num_hidden_layers: the main stack, without MTP layers
    int first_k_dense_replace = 3;
    int moe_layer_freq = 1;
    int64_t intermediate_size = 18432;      // dense MLP width
    int64_t moe_intermediate_size = 2048;   // one routed (and shared) expert's width
    int64_t n_routed_experts = 256;         // 0: no MoE layers at all
    int64_t n_shared_experts = 1;
    int64_t num_experts_per_tok = 8;
    int64_t n_group = 8;
    int64_t topk_group = 4;
    TopkMethod topk_method = TopkMethod::noaux_tc;
    ScoringFunc scoring_func = ScoringFunc::sigmoid;
    bool norm_topk_prob = true;
    double routed_scaling_factor = 2.5;

    int64_t n_heads = 128;  // num_attention_heads
    std::optional<int64_t> q_lora_rank = 1536;  // nullopt: V2-Lite-style single q_proj
    int64_t kv_lora_rank = 512;
    int64_t qk_nope_head_dim = 128;
    int64_t qk_rope_head_dim = 64;
    int64_t v_head_dim = 128;

    double rope_theta = 10000.0;
    std::optional<YarnRopeScaling> rope_scaling;  // nullopt: plain RoPE
    int64_t max_position_embeddings = 4096;
    double rms_norm_eps = 1e-6;
    int num_nextn_predict_layers = 1;  // MTP modules stored after the main stack
    bool tie_word_embeddings = false;
    int64_t bos_token_id = 0;
    std::vector<int64_t> eos_token_ids = {1};  // config.json may give one id or a list
    std::optional<Fp8Quantization> quantization;  // nullopt: weights stored unquantised
    std::string torch_dtype;                      // informational ("bfloat16", "float32", ...)

    int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
    int64_t eos_token_id() const { return eos_token_ids.empty() ? -1 : eos_token_ids.front(); }
    // As transformers' DeepseekV3DecoderLayer decides it.
    bool is_moe_layer(int layer) const {
        return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
    }

    // Parses config.json text; absent keys take the defaults of transformers' config class for
    // the model_type. Throws Error(invalid_input / unsupported) naming `source` and the field.
    static ModelConfig parse(std::string_view json_text, std::string_view source = "config.json");
    // Reads `path` (a config.json file or a model directory holding one), parses and validates.
    static ModelConfig load(const std::filesystem::path& path);
    // Consistency checks (divisibility, ranges, even rope dim); messages name `source` and field.
    void validate(std::string_view source = "config.json") const;
    // The config.json object (HF key names) that parse() reads back to an equal config.
    nlohmann::json to_json() const;

    // Presets with the values of spec §1.
    static ModelConfig deepseek_v3_671b();
    static ModelConfig deepseek_v3_1();  // V3 + quantization scale_fmt ue8m0
    static ModelConfig deepseek_v2_236b();
    static ModelConfig deepseek_v2_lite();
    static ModelConfig kimi_k2();
};

}  // namespace sluice
