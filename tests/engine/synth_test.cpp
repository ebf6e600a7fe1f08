// `sluice synth` output reads back through the safetensors reader and ModelConfig with HF
// DeepSeek-V3 names and shapes, deterministic values of the intended scale, and the same
// tensors whether written as one file or as shards. (transformers loads the same output with
// no missing or unexpected keys: scripts/check_synth_with_transformers.py.)
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "engine/synth.hpp"
#include "formats/model_config.hpp"
#include "formats/safetensors.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

struct ScratchDir {
    fs::path path;
    explicit ScratchDir(const char* tag) {
        path = fs::temp_directory_path() / ("sluice_synth_" + std::string(tag) + "_" + std::to_string(::getpid()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

// The tiny preset with a small vocabulary, so a test writes a few hundred KB.
ModelConfig small_vocab_tiny() {
    ModelConfig c = synth_preset("tiny");
    c.vocab_size = 512;
    return c;
}

std::vector<float> read_floats(const SafetensorsCheckpoint& ck, const SafetensorsTensor& t) {
    auto bytes = ck.read_tensor(t);
    std::vector<float> out(static_cast<size_t>(t.n_elements()));
    if (t.dtype == DType::BF16) {
        for (size_t i = 0; i < out.size(); ++i) {
            uint16_t h;
            std::memcpy(&h, bytes.data() + 2 * i, 2);
            out[i] = bf16_to_f32(h);
        }
    } else {
        REQUIRE(t.dtype == DType::F32);
        std::memcpy(out.data(), bytes.data(), bytes.size());
    }
    return out;
}

double stddev(const std::vector<float>& v) {
    double mean = 0, sq = 0;
    for (float x : v) mean += x;
    mean /= v.size();
    for (float x : v) sq += (x - mean) * (x - mean);
    return std::sqrt(sq / v.size());
}

}  // namespace

TEST_CASE("a synthesized model reads back with HF DeepSeek-V3 names and shapes") {
    ScratchDir dir("names");
    SynthOptions options;
    options.config = small_vocab_tiny();
    options.output_dir = dir.path;
    options.weight_dtype = "F32";
    SynthSummary summary = write_synthetic_model(options);
    CHECK(summary.n_shards == 1);

    ModelConfig config = ModelConfig::load(dir.path);
    CHECK(config.to_json()["hidden_size"] == 64);
    CHECK(config.n_layers == 2);
    CHECK(config.vocab_size == 512);
    CHECK(config.torch_dtype == "float32");

    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path);
    CHECK(ck.tensors().size() == summary.n_tensors);
    const int64_t h = 64, heads = 2, q_lora = 32, kv = 32, nope = 16, rope = 8, v = 16, experts = 8, moe_inter = 32;
    ck.expect_tensor("model.embed_tokens.weight", {512, h});
    ck.expect_tensor("model.norm.weight", {h});
    ck.expect_tensor("lm_head.weight", {512, h});
    for (int layer = 0; layer < 2; ++layer) {
        const std::string p = "model.layers." + std::to_string(layer) + ".";
        CAPTURE(layer);
        ck.expect_tensor(p + "input_layernorm.weight", {h});
        ck.expect_tensor(p + "post_attention_layernorm.weight", {h});
        ck.expect_tensor(p + "self_attn.q_a_proj.weight", {q_lora, h});
        ck.expect_tensor(p + "self_attn.q_a_layernorm.weight", {q_lora});
        ck.expect_tensor(p + "self_attn.q_b_proj.weight", {heads * (nope + rope), q_lora});
        ck.expect_tensor(p + "self_attn.kv_a_proj_with_mqa.weight", {kv + rope, h});
        ck.expect_tensor(p + "self_attn.kv_a_layernorm.weight", {kv});
        ck.expect_tensor(p + "self_attn.kv_b_proj.weight", {heads * (nope + v), kv});
        ck.expect_tensor(p + "self_attn.o_proj.weight", {h, heads * v});
    }
    // Layer 0 is dense (first_k_dense_replace = 1), layer 1 is MoE.
    ck.expect_tensor("model.layers.0.mlp.gate_proj.weight", {128, h});
    ck.expect_tensor("model.layers.0.mlp.down_proj.weight", {h, 128});
    CHECK(ck.find("model.layers.0.mlp.gate.weight") == nullptr);
    ck.expect_tensor("model.layers.1.mlp.gate.weight", {experts, h});
    const SafetensorsTensor& bias = ck.expect_tensor("model.layers.1.mlp.gate.e_score_correction_bias", {experts});
    CHECK(bias.dtype == DType::F32);
    for (int e = 0; e < experts; ++e) {
        const std::string p = "model.layers.1.mlp.experts." + std::to_string(e) + ".";
        ck.expect_tensor(p + "gate_proj.weight", {moe_inter, h});
        ck.expect_tensor(p + "up_proj.weight", {moe_inter, h});
        ck.expect_tensor(p + "down_proj.weight", {h, moe_inter});
    }
    CHECK(ck.find("model.layers.1.mlp.experts.8.gate_proj.weight") == nullptr);
    ck.expect_tensor("model.layers.1.mlp.shared_experts.gate_proj.weight", {moe_inter, h});
    ck.expect_tensor("model.layers.1.mlp.shared_experts.down_proj.weight", {h, moe_inter});
    CHECK(ck.find("model.layers.1.mlp.gate_proj.weight") == nullptr);
}

TEST_CASE("synthesized weights have norms of one and 1/sqrt(fan_in) projections") {
    ScratchDir dir("scales");
    SynthOptions options;
    options.config = small_vocab_tiny();
    options.output_dir = dir.path;
    options.weight_dtype = "BF16";
    write_synthetic_model(options);
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path);

    const SafetensorsTensor& norm = *ck.find("model.layers.1.self_attn.kv_a_layernorm.weight");
    CHECK(norm.dtype == DType::BF16);
    for (float x : read_floats(ck, norm)) CHECK(x == 1.0f);

    auto embed = read_floats(ck, *ck.find("model.embed_tokens.weight"));
    CHECK(stddev(embed) == doctest::Approx(1.0).epsilon(0.03));
    auto q_b = read_floats(ck, *ck.find("model.layers.0.self_attn.q_b_proj.weight"));  // fan_in 32
    CHECK(stddev(q_b) == doctest::Approx(1.0 / std::sqrt(32.0)).epsilon(0.05));
    auto down = read_floats(ck, *ck.find("model.layers.0.mlp.down_proj.weight"));  // fan_in 128
    CHECK(stddev(down) == doctest::Approx(1.0 / std::sqrt(128.0)).epsilon(0.05));
    auto bias = read_floats(ck, *ck.find("model.layers.1.mlp.gate.e_score_correction_bias"));
    for (float b : bias) CHECK(std::fabs(b) < 0.02f);
    CHECK(stddev(bias) > 0.0);
}

TEST_CASE("synth is deterministic per seed and independent of sharding") {
    ScratchDir one("one"), sharded("sharded"), other_seed("seed");
    SynthOptions options;
    options.config = small_vocab_tiny();
    options.weight_dtype = "F32";
    options.seed = 7;
    options.output_dir = one.path;
    write_synthetic_model(options);
    options.output_dir = sharded.path;
    options.max_shard_bytes = 64 << 10;
    SynthSummary s = write_synthetic_model(options);
    CHECK(s.n_shards > 2);
    CHECK(fs::exists(sharded.path / "model.safetensors.index.json"));
    CHECK(fs::exists(sharded.path / fmt::format("model-00001-of-{:06d}.safetensors", s.n_shards)));
    options.output_dir = other_seed.path;
    options.max_shard_bytes = 4ull << 30;
    options.seed = 8;
    write_synthetic_model(options);

    SafetensorsCheckpoint a = SafetensorsCheckpoint::open(one.path);
    SafetensorsCheckpoint b = SafetensorsCheckpoint::open(sharded.path);
    SafetensorsCheckpoint c = SafetensorsCheckpoint::open(other_seed.path);
    CHECK(b.files().paths.size() == s.n_shards);
    REQUIRE(a.tensors().size() == b.tensors().size());
    for (const SafetensorsTensor& t : a.tensors()) {
        const SafetensorsTensor* u = b.find(t.name);
        REQUIRE(u != nullptr);
        CHECK(u->shape == t.shape);
        CHECK(a.read_tensor(t) == b.read_tensor(*u));
    }
    const SafetensorsTensor& w = *a.find("model.layers.1.mlp.experts.5.up_proj.weight");
    CHECK(a.read_tensor(w) != c.read_tensor(*c.find(w.name)));
}

TEST_CASE("a V2-Lite-style config synthesizes q_proj and no correction bias") {
    ScratchDir dir("lite");
    SynthOptions options;
    options.config = ModelConfig::deepseek_v2_lite();
    options.config.vocab_size = 256;
    options.config.hidden_size = 32;
    options.config.n_layers = 2;
    options.config.intermediate_size = 64;
    options.config.moe_intermediate_size = 16;
    options.config.n_routed_experts = 8;
    options.config.num_experts_per_tok = 2;
    options.config.n_heads = 2;
    options.config.kv_lora_rank = 16;
    options.config.qk_nope_head_dim = 8;
    options.config.qk_rope_head_dim = 4;
    options.config.v_head_dim = 8;
    options.config.bos_token_id = 0;
    options.config.eos_token_ids = {1};
    options.output_dir = dir.path;
    write_synthetic_model(options);
    ModelConfig back = ModelConfig::load(dir.path);
    CHECK_FALSE(back.q_lora_rank.has_value());
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path);
    ck.expect_tensor("model.layers.0.self_attn.q_proj.weight", {2 * 12, 32});
    CHECK(ck.find("model.layers.0.self_attn.q_a_proj.weight") == nullptr);
    CHECK(ck.find("model.layers.1.mlp.gate.e_score_correction_bias") == nullptr);
    ck.expect_tensor("model.layers.1.mlp.shared_experts.up_proj.weight", {2 * 16, 32});
}

TEST_CASE("an MTP layer is written after the main stack when the config has one") {
    ModelConfig c = small_vocab_tiny();
    c.num_nextn_predict_layers = 1;
    auto specs = synth_tensor_specs(c, "BF16");
    auto has = [&](const std::string& name) {
        for (const auto& s : specs)
            if (s.name == name) return true;
        return false;
    };
    CHECK(has("model.layers.2.eh_proj.weight"));
    CHECK(has("model.layers.2.shared_head.head.weight"));
    CHECK(has("model.layers.2.mlp.experts.7.down_proj.weight"));
    CHECK_FALSE(has("model.layers.3.input_layernorm.weight"));
}

TEST_CASE("the presets are valid configs with the tokenizer's vocabulary") {
    for (const char* name : {"tiny", "small", "v3"}) {
        CAPTURE(name);
        ModelConfig c = synth_preset(name);
        CHECK_NOTHROW(c.validate(name));
        CHECK(c.vocab_size == 129280);
        CHECK_FALSE(c.quantization.has_value());
    }
    ModelConfig small = synth_preset("small");
    CHECK(small.hidden_size == 256);
    CHECK(small.n_layers == 4);
    CHECK(small.n_routed_experts == 16);
    CHECK_THROWS_AS(synth_preset("huge"), Error);
}

TEST_CASE("the sluice synth command writes a loadable model with the real tokenizer") {
    const char* bin = std::getenv("SLUICE_BIN");
    const char* shared = std::getenv("SLUICE_SHARED");
    REQUIRE(bin != nullptr);
    ScratchDir dir("cli");
    fs::path tokenizer = shared ? fs::path(shared) / "models" / "deepseek-v3-tokenizer" : fs::path();
    const bool have_tokenizer = shared && fs::exists(tokenizer / "tokenizer.json");
    std::string command = fmt::format("'{}' synth -o '{}' --preset tiny --layers 3 --dtype f32 --seed 3 {} > '{}' 2>&1", bin,
                                      dir.path.string(),
                                      have_tokenizer ? "--tokenizer '" + tokenizer.string() + "'" : std::string("--no-tokenizer"),
                                      (dir.path / "log.txt").string());
    REQUIRE(std::system(command.c_str()) == 0);
    ModelConfig c = ModelConfig::load(dir.path);
    CHECK(c.n_layers == 3);
    SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path);
    ck.expect_tensor("model.layers.2.mlp.experts.7.down_proj.weight", {64, 32});
    CHECK(ck.find("lm_head.weight")->dtype == DType::F32);
    if (have_tokenizer) CHECK(fs::file_size(dir.path / "tokenizer.json") == fs::file_size(tokenizer / "tokenizer.json"));

    std::string bad = fmt::format("'{}' synth -o '{}' --preset huge > /dev/null 2>&1", bin, dir.path.string());
    CHECK(std::system(bad.c_str()) != 0);
}
