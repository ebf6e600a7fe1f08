// ModelConfig against real-looking config.json files (tests/data/configs/, values of spec §1) and
// broken ones: every error names the file and the offending field.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "formats/model_config.hpp"

using namespace sluice;

namespace {

std::filesystem::path configs_dir() {
    const char* data = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(data != nullptr, "SLUICE_TEST_DATA is not set");
    return std::filesystem::path(data) / "configs";
}

ModelConfig load_config(const char* name) { return ModelConfig::load(configs_dir() / name); }

// The error message of loading `name`, which must fail with `kind`.
std::string load_error(const char* name, ErrorKind kind) {
    try {
        load_config(name);
    } catch (const Error& e) {
        CHECK(e.kind() == kind);
        return e.what();
    }
    FAIL("loading ", name, " did not fail");
    return {};
}

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("DeepSeek-V3 config.json parses to the spec 1.1 values") {
    ModelConfig c = load_config("deepseek_v3.json");
    CHECK(c.model_type == "deepseek_v3");
    CHECK(c.vocab_size == 129280);
    CHECK(c.hidden_size == 7168);
    CHECK(c.n_layers == 61);
    CHECK(c.first_k_dense_replace == 3);
    CHECK(c.moe_layer_freq == 1);
    CHECK(c.intermediate_size == 18432);
    CHECK(c.moe_intermediate_size == 2048);
    CHECK(c.n_routed_experts == 256);
    CHECK(c.n_shared_experts == 1);
    CHECK(c.num_experts_per_tok == 8);
    CHECK(c.n_group == 8);
    CHECK(c.topk_group == 4);
    CHECK(c.topk_method == TopkMethod::noaux_tc);
    CHECK(c.scoring_func == ScoringFunc::sigmoid);
    CHECK(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == doctest::Approx(2.5));
    CHECK(c.n_heads == 128);
    REQUIRE(c.q_lora_rank.has_value());
    CHECK(*c.q_lora_rank == 1536);
    CHECK(c.kv_lora_rank == 512);
    CHECK(c.qk_nope_head_dim == 128);
    CHECK(c.qk_rope_head_dim == 64);
    CHECK(c.v_head_dim == 128);
    CHECK(c.qk_head_dim() == 192);
    CHECK(c.rope_theta == doctest::Approx(10000));
    REQUIRE(c.rope_scaling.has_value());
    CHECK(c.rope_scaling->factor == doctest::Approx(40));
    CHECK(c.rope_scaling->original_max_position_embeddings == 4096);
    CHECK(c.rope_scaling->beta_fast == doctest::Approx(32));
    CHECK(c.rope_scaling->beta_slow == doctest::Approx(1));
    CHECK(c.rope_scaling->mscale == doctest::Approx(1.0));
    CHECK(c.rope_scaling->mscale_all_dim == doctest::Approx(1.0));
    CHECK(c.max_position_embeddings == 163840);
    CHECK(c.rms_norm_eps == doctest::Approx(1e-6));
    CHECK(c.num_nextn_predict_layers == 1);
    CHECK_FALSE(c.tie_word_embeddings);
    CHECK(c.bos_token_id == 0);
    CHECK(c.eos_token_id() == 1);
    REQUIRE(c.quantization.has_value());
    CHECK(c.quantization->fmt == "e4m3");
    CHECK(c.quantization->weight_block_rows == 128);
    CHECK(c.quantization->weight_block_cols == 128);
    CHECK(c.quantization->scale_fmt.empty());
    CHECK_FALSE(c.is_moe_layer(2));
    CHECK(c.is_moe_layer(3));
    CHECK(c.is_moe_layer(60));
}

TEST_CASE("the V3 preset equals the parsed V3 config.json") {
    ModelConfig parsed = load_config("deepseek_v3.json");
    ModelConfig preset = ModelConfig::deepseek_v3_671b();
    nlohmann::json a = parsed.to_json(), b = preset.to_json();
    a.erase("torch_dtype");
    b.erase("torch_dtype");
    CHECK(a == b);
}

TEST_CASE("DeepSeek-V3.1 config.json carries scale_fmt ue8m0") {
    ModelConfig c = load_config("deepseek_v3_1.json");
    REQUIRE(c.quantization.has_value());
    CHECK(c.quantization->scale_fmt == "ue8m0");
    CHECK(ModelConfig::deepseek_v3_1().quantization->scale_fmt == "ue8m0");
}

TEST_CASE("DeepSeek-V2 config.json: group_limited_greedy softmax routing, 160 experts") {
    ModelConfig c = load_config("deepseek_v2.json");
    CHECK(c.model_type == "deepseek_v2");
    CHECK(c.hidden_size == 5120);
    CHECK(c.n_layers == 60);
    CHECK(c.n_routed_experts == 160);
    CHECK(c.n_shared_experts == 2);
    CHECK(c.num_experts_per_tok == 6);
    CHECK(c.topk_group == 3);
    CHECK(c.topk_method == TopkMethod::group_limited_greedy);
    CHECK(c.scoring_func == ScoringFunc::softmax);
    CHECK_FALSE(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == doctest::Approx(16.0));
    CHECK(c.rope_scaling->mscale == doctest::Approx(0.707));
    CHECK(c.bos_token_id == 100000);
    CHECK(c.eos_token_id() == 100001);
    CHECK(c.num_nextn_predict_layers == 0);  // absent in V2: DeepseekV2Config has no MTP
    CHECK_FALSE(c.quantization.has_value());
    CHECK(c.to_json() == ModelConfig::deepseek_v2_236b().to_json());
}

TEST_CASE("DeepSeek-V2-Lite config.json: q_lora_rank null means a single q_proj") {
    ModelConfig c = load_config("deepseek_v2_lite.json");
    CHECK_FALSE(c.q_lora_rank.has_value());
    CHECK(c.n_heads == 16);
    CHECK(c.hidden_size == 2048);
    CHECK(c.n_routed_experts == 64);
    CHECK(c.topk_method == TopkMethod::greedy);
    CHECK(c.n_group == 1);
    CHECK(c.to_json() == ModelConfig::deepseek_v2_lite().to_json());
}

TEST_CASE("Kimi K2 config.json: 384 experts, no group limit, rope_theta 50000") {
    ModelConfig c = load_config("kimi_k2.json");
    CHECK(c.model_type == "kimi_k2");
    CHECK(c.vocab_size == 163840);
    CHECK(c.n_routed_experts == 384);
    CHECK(c.n_group == 1);
    CHECK(c.topk_group == 1);
    CHECK(c.n_heads == 64);
    CHECK(c.routed_scaling_factor == doctest::Approx(2.827));
    CHECK(c.rope_theta == doctest::Approx(50000));
    CHECK(c.rope_scaling->factor == doctest::Approx(32));
    CHECK(c.rope_scaling->beta_fast == doctest::Approx(1));
    CHECK(c.first_k_dense_replace == 1);
    CHECK(c.bos_token_id == 163584);
    CHECK(c.to_json() == ModelConfig::kimi_k2().to_json());
}

TEST_CASE("absent keys take DeepseekV3Config's defaults") {
    // transformers 5.24 DeepseekV3Config(): max_position_embeddings 4096, no rope scaling,
    // the remote-code routing defaults noaux_tc / sigmoid / one MTP layer.
    ModelConfig c = load_config("minimal_v3.json");
    CHECK(c.vocab_size == 129280);
    CHECK(c.hidden_size == 7168);
    CHECK(c.n_layers == 61);
    CHECK(c.max_position_embeddings == 4096);
    CHECK_FALSE(c.rope_scaling.has_value());
    CHECK(c.topk_method == TopkMethod::noaux_tc);
    CHECK(c.scoring_func == ScoringFunc::sigmoid);
    CHECK(c.num_nextn_predict_layers == 1);
    CHECK(c.q_lora_rank == 1536);
    CHECK_FALSE(c.quantization.has_value());
}

TEST_CASE("absent keys of a deepseek_v2 config take DeepseekV2Config's defaults") {
    ModelConfig c = ModelConfig::parse(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 6})", "v2.json");
    CHECK(c.vocab_size == 102400);
    CHECK(c.hidden_size == 4096);
    CHECK(c.n_routed_experts == 64);
    CHECK(c.n_shared_experts == 2);
    CHECK(c.moe_intermediate_size == 1407);
    CHECK(c.first_k_dense_replace == 0);
    CHECK(c.topk_method == TopkMethod::greedy);
    CHECK(c.scoring_func == ScoringFunc::softmax);
    CHECK_FALSE(c.norm_topk_prob);
    CHECK(c.num_nextn_predict_layers == 0);
    // DeepseekV2Config leaves num_experts_per_tok None: without it a MoE model cannot route.
    CHECK_THROWS_WITH_AS(ModelConfig::parse(R"({"model_type": "deepseek_v2"})", "v2.json"),
                         doctest::Contains("num_experts_per_tok"), Error);
}

TEST_CASE("the oracle fixtures' configs parse (transformers-written, float32)") {
    const char* data = std::getenv("SLUICE_TEST_DATA");
    REQUIRE(data != nullptr);
    ModelConfig v3 = ModelConfig::load(std::filesystem::path(data) / "hf_tiny_v3");
    CHECK(v3.hidden_size == 64);
    CHECK(v3.num_nextn_predict_layers == 0);
    ModelConfig lite = ModelConfig::load(std::filesystem::path(data) / "hf_tiny_v2lite" / "config.json");
    CHECK_FALSE(lite.q_lora_rank.has_value());
    ModelConfig shared3 = ModelConfig::load(std::filesystem::path(data) / "hf_tiny_v3_shared3");
    CHECK(shared3.n_shared_experts == 3);
    CHECK(shared3.q_lora_rank == 24);
}

TEST_CASE("to_json round-trips through parse") {
    for (const ModelConfig& c : {ModelConfig::deepseek_v3_671b(), ModelConfig::deepseek_v2_lite(), ModelConfig::kimi_k2()}) {
        ModelConfig back = ModelConfig::parse(c.to_json().dump(), "roundtrip.json");
        CHECK(back.to_json() == c.to_json());
    }
}

TEST_CASE("eos_token_id may be a list") {
    ModelConfig c = ModelConfig::parse(R"({"model_type": "deepseek_v3", "eos_token_id": [1, 2]})", "x.json");
    CHECK(c.eos_token_ids == std::vector<int64_t>{1, 2});
    CHECK(c.eos_token_id() == 1);
}

TEST_CASE("rope_parameters (transformers 5 spelling) is read like rope_scaling") {
    ModelConfig c = ModelConfig::parse(
        R"({"model_type": "deepseek_v3", "rope_parameters": {"rope_type": "yarn", "rope_theta": 50000, "factor": 32,
            "original_max_position_embeddings": 4096, "beta_fast": 1, "beta_slow": 1, "mscale": 1, "mscale_all_dim": 1}})",
        "x.json");
    REQUIRE(c.rope_scaling.has_value());
    CHECK(c.rope_scaling->factor == doctest::Approx(32));
    CHECK(c.rope_theta == doctest::Approx(50000));
}

TEST_CASE("a directory without config.json is an error naming the path") {
    std::string message;
    try {
        ModelConfig::load(configs_dir() / "no_such_model_dir");
    } catch (const Error& e) {
        message = e.what();
    }
    CHECK(contains(message, "no_such_model_dir"));
    CHECK(contains(message, "config.json"));
}

TEST_CASE("bad configs fail with one line naming file and field") {
    struct Case {
        const char* file;
        ErrorKind kind;
        const char* field;
    };
    const Case cases[] = {
        {"bad_model_type.json", ErrorKind::unsupported, "'model_type': 'llama'"},
        {"bad_n_group.json", ErrorKind::invalid_input, "'n_group'"},
        {"bad_topk_group.json", ErrorKind::invalid_input, "'topk_group'"},
        {"bad_top_k.json", ErrorKind::invalid_input, "'num_experts_per_tok'"},
        {"bad_rope_dim.json", ErrorKind::invalid_input, "'qk_rope_head_dim'"},
        {"bad_head_dim.json", ErrorKind::invalid_input, "'v_head_dim'"},
        {"bad_type_hidden.json", ErrorKind::invalid_input, "'hidden_size'"},
        {"bad_topk_method.json", ErrorKind::unsupported, "'topk_method': 'sinkhorn'"},
        {"bad_quant.json", ErrorKind::unsupported, "weight_block_size"},
        {"bad_rope_type.json", ErrorKind::unsupported, "linear"},
        {"bad_not_json.json", ErrorKind::invalid_input, "not well-formed JSON"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.file);
        std::string message = load_error(c.file, c.kind);
        CHECK(contains(message, c.file));
        CHECK(contains(message, c.field));
        CHECK(message.find('\n') == std::string::npos);
    }
}
