// A model from its dimensions alone plans exactly as the GGUF `sluice synth` writes for the same
// shapes (so `sluice plan --preset v3` sizes the real thing), follows llama.cpp's per-tensor rules
// for the q4_k_m and q2_k mixes, and reads as random blocks the compute probe can run.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>

#include <unistd.h>

#include <fmt/format.h>

#include "engine/model_loader.hpp"
#include "engine/shape_model.hpp"
#include "engine/synth.hpp"
#include "engine/synth_gguf.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

void check_same_segment(const Segment& a, const Segment& b, uint64_t a_base, uint64_t b_base) {
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (size_t i = 0; i < a.tensors.size(); ++i) {
        const auto& x = a.tensors[i];
        const auto& y = b.tensors[i];
        CAPTURE(x.name);
        CHECK(x.name == y.name);
        CHECK(x.role == y.role);
        CHECK(x.type == y.type);
        CHECK(x.rows == y.rows);
        CHECK(x.cols == y.cols);
        CHECK(x.extent.length == y.extent.length);
        CHECK(x.extent.offset - a_base == y.extent.offset - b_base);  // same layout, whatever the header
    }
}

std::map<std::string, DType> tensor_types(const ModelPlan& p) {
    std::map<std::string, DType> out;
    auto add = [&](const Segment& s) {
        for (const auto& t : s.tensors) out[t.name] = t.type;
    };
    add(p.globals);
    for (const auto& l : p.layers) {
        add(l.dense);
        add(l.vectors);
        for (const auto& e : l.experts) add(e);
    }
    return out;
}

}  // namespace

TEST_CASE("a shapes-only model plans byte for byte as the GGUF sluice synth writes for the same shapes") {
    const char* shared = std::getenv("SLUICE_SHARED");
    REQUIRE_MESSAGE(shared, "SLUICE_SHARED is not set");
    GgufSynthOptions o;
    o.config = synth_gguf_config("small", 3, 1, 8);  // hidden 256, experts 128 wide: Q8_0 blocks fit every row
    o.expert_type = DType::Q8_0;
    o.dense_type = DType::Q4_0;
    o.embed_type = DType::Q8_0;
    o.head_type = DType::F16;
    o.tokenizer_dir = fs::path(shared) / "models" / "deepseek-v3-tokenizer";
    o.output_path = fs::temp_directory_path() / fmt::format("sluice_shape_model_{}.gguf", ::getpid());
    write_synthetic_gguf(o);
    const auto file = open_model(o.output_path.string());
    const auto shapes = open_shape_model(o.config, o, nullptr, "shapes");
    std::error_code ec;
    fs::remove(o.output_path, ec);

    CHECK(shapes->format == "shapes");
    CHECK(shapes->layout.n_layers == file->layout.n_layers);
    CHECK(shapes->layout.split_kv_b == file->layout.split_kv_b);
    CHECK(shapes->plan.total_bytes() == file->plan.total_bytes());
    const uint64_t a = file->plan.globals.tensors.front().extent.offset, b = shapes->plan.globals.tensors.front().extent.offset;
    check_same_segment(file->plan.globals, shapes->plan.globals, a, b);
    check_same_segment(file->plan.global_vectors, shapes->plan.global_vectors, a, b);
    REQUIRE(file->plan.layers.size() == shapes->plan.layers.size());
    for (size_t l = 0; l < file->plan.layers.size(); ++l) {
        CAPTURE(l);
        const auto& x = file->plan.layers[l];
        const auto& y = shapes->plan.layers[l];
        CHECK(x.is_moe == y.is_moe);
        check_same_segment(x.dense, y.dense, a, b);
        check_same_segment(x.vectors, y.vectors, a, b);
        REQUIRE(x.experts.size() == y.experts.size());
        for (size_t e = 0; e < x.experts.size(); ++e) check_same_segment(x.experts[e], y.experts[e], a, b);
    }
}

TEST_CASE("q4_k_m on DeepSeek-V3 gives ffn_down Q6_K in the layers llama.cpp's use_more_bits picks, Q4_K elsewhere") {
    ShapeModelOptions o;
    o.preset = "v3";
    o.mix = "q4_k_m";
    const auto m = open_shape_model(o);
    CHECK(m->layout.n_layers == 61);
    CHECK(m->layout.n_experts == 256);
    int q6_layers = 0;
    for (int l = 0; l < 61; ++l) {
        const auto& lp = m->plan.layers[size_t(l)];
        // use_more_bits(i, 61): i < 7, i >= 53, or (i - 7) % 3 == 2.
        const bool more = l < 7 || l >= 53 || (l - 7) % 3 == 2;
        const DType down = lp.is_moe ? lp.experts[17].tensors[2].type : lp.dense.tensors.back().type;
        CAPTURE(l);
        CHECK(down == (more ? DType::Q6_K : DType::Q4_K));
        if (lp.is_moe) CHECK(lp.experts[17].tensors[0].type == DType::Q4_K);
        q6_layers += more;
    }
    CHECK(q6_layers == 30);
    const auto types = tensor_types(m->plan);
    CHECK(types.at("output.weight") == DType::Q6_K);
    CHECK(types.at("token_embd.weight") == DType::Q4_K);
    CHECK(types.at("blk.10.attn_output.weight") == DType::Q4_K);
    CHECK(types.at("blk.10.attn_k_b.weight") == DType::Q8_0);  // rows of 128 fit no K-quant
    CHECK(types.at("blk.10.ffn_gate_inp.weight") == DType::F32);
    // The Q4_K_M files people download: bartowski's DeepSeek-V3-0324-Q4_K_M.gguf is 404.43 GB
    // (huggingface.co/bartowski/deepseek-ai_DeepSeek-V3-0324-GGUF); the shapes come within 2%.
    const double gb = double(m->plan.total_bytes()) / 1e9;
    MESSAGE("DeepSeek-V3 at q4_k_m: " << gb << " GB");
    CHECK(gb > 395);
    CHECK(gb < 410);
}

TEST_CASE("q2_k on DeepSeek-V3: Q2_K with ffn_down and attn_output Q3_K, the head Q6_K") {
    ShapeModelOptions o;
    o.preset = "v3";
    o.mix = "q2_k";
    const auto m = open_shape_model(o);
    const auto types = tensor_types(m->plan);
    CHECK(types.at("token_embd.weight") == DType::Q2_K);
    CHECK(types.at("output.weight") == DType::Q6_K);
    CHECK(types.at("blk.4.attn_q_b.weight") == DType::Q2_K);
    CHECK(types.at("blk.4.attn_output.weight") == DType::Q3_K);
    CHECK(types.at("blk.4.ffn_down_shexp.weight") == DType::Q3_K);
    CHECK(types.at("blk.1.ffn_down.weight") == DType::Q3_K);
    CHECK(types.at("blk.1.ffn_up.weight") == DType::Q2_K);
    const auto& expert = m->plan.layers[30].experts[0];
    CHECK(expert.tensors[0].type == DType::Q2_K);
    CHECK(expert.tensors[2].type == DType::Q3_K);
    const double gb = double(m->plan.total_bytes()) / 1e9;
    MESSAGE("DeepSeek-V3 at q2_k: " << gb << " GB");
    CHECK(gb > 235);
    CHECK(gb < 255);
}

TEST_CASE("a shapes-only model reads as random blocks: the same bytes however a tensor is sliced") {
    const ModelConfig c = synth_gguf_config("small", 3, 1, 8);
    GgufSynthOptions types;
    types.expert_type = types.dense_type = types.embed_type = DType::Q8_0;
    const auto m = open_shape_model(c, types, nullptr, "shapes");
    const Segment& experts_layer = m->plan.layers[1].experts[3];
    const PlannedTensor& up = experts_layer.tensors[1];
    CHECK(up.name == "blk.1.ffn_up_exps.weight[expert 3]");
    const SourceTensor* whole = m->source->find("blk.1.ffn_up_exps.weight");
    REQUIRE(whole != nullptr);
    std::vector<std::byte> all(whole->extent.length), one(up.extent.length), again(up.extent.length);
    m->source->read(*whole, all);
    m->source->read(SourceTensor{up.name, up.type, {}, up.extent}, one);
    m->source->read(SourceTensor{up.name, up.type, {}, up.extent}, again);
    CHECK(one == again);
    CHECK(std::equal(one.begin(), one.end(), all.begin() + ptrdiff_t(up.extent.offset - whole->extent.offset)));
    // Finite, zero-mean values at about 1/sqrt(fan-in).
    std::vector<float> row(size_t(up.cols));
    double sum = 0, sq = 0;
    const int64_t row_size = row_bytes(up.type, up.cols);
    for (int64_t r = 0; r < up.rows; ++r) {
        block_type(up.type).dequantize_row(one.data() + r * row_size, row.data(), up.cols);
        for (float v : row) {
            REQUIRE(std::isfinite(v));
            sum += v;
            sq += double(v) * v;
        }
    }
    const double n = double(up.rows * up.cols);
    CHECK(std::abs(sum / n) < 0.01);
    CHECK(std::sqrt(sq / n) == doctest::Approx(1.0 / std::sqrt(double(up.cols))).epsilon(0.3));
}
