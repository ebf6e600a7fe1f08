// `sluice synth -o X.gguf`: random blocks of every supported type are valid, zero-mean and of
// the requested scale; a small synthetic deepseek2 GGUF (K-quant experts, the real DeepSeek-V3
// tokenizer) reads back through sluice's GGUF reader with the same config, tokenises like the
// HF tokenizer and generates with routing that differs between tokens. (llama.cpp loading the
// same kind of file at V3 dimensions: scripts/check_synth_gguf.py.)
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/half.hpp"
#include "engine/gguf_source.hpp"
#include "engine/synth.hpp"
#include "engine/synth_gguf.hpp"
#include "run_command.hpp"
#include "tests/engine/k_quant_tiny.hpp"
#include "formats/gguf.hpp"
#include "formats/tokenizer.hpp"
#include "kernels/block_type.hpp"
#include "kernels/quant_blocks.hpp"
#include "kernels/random_blocks.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

fs::path shared_tokenizer() {
    const char* shared = std::getenv("SLUICE_SHARED");
    REQUIRE_MESSAGE(shared, "SLUICE_SHARED is not set");
    return fs::path(shared) / "models" / "deepseek-v3-tokenizer";
}


GgufSynthOptions tiny_options(const fs::path& path) {
    GgufSynthOptions o;
    o.config = k_quant_tiny();
    o.output_path = path;
    o.expert_type = DType::Q4_K;
    o.dense_type = DType::Q6_K;
    o.embed_type = DType::Q4_K;
    o.head_type = DType::Q8_0;
    o.seed = 7;
    o.tokenizer_dir = shared_tokenizer();
    o.chunk_bytes = 1 << 20;  // several chunks per large tensor: exercises the pipeline
    return o;
}

// One file for the whole process (about 40 MB, most of it the 129280-row embedding and head).
const fs::path& tiny_gguf() {
    static const fs::path path = [] {
        fs::path p = fs::temp_directory_path() / fmt::format("sluice_synth_gguf_{}.gguf", ::getpid());
        write_synthetic_gguf(tiny_options(p));
        return p;
    }();
    return path;
}
struct RemoveAtExit {
    ~RemoveAtExit() {
        std::error_code ec;
        fs::remove(fs::temp_directory_path() / fmt::format("sluice_synth_gguf_{}.gguf", ::getpid()), ec);
    }
} remove_at_exit;

std::vector<float> dequantize(DType type, const void* blocks, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n));
    REQUIRE(static_cast<bool>(block_type(type).dequantize_row));
    block_type(type).dequantize_row(blocks, out.data(), n);
    return out;
}

struct Moments {
    double mean = 0, std = 0;
    bool finite = true;
};
Moments moments(const std::vector<float>& v) {
    Moments m;
    double sum = 0, sum2 = 0;
    for (float x : v) {
        if (!std::isfinite(x)) m.finite = false;
        sum += x;
        sum2 += double(x) * x;
    }
    m.mean = sum / double(v.size());
    m.std = std::sqrt(std::max(0.0, sum2 / double(v.size()) - m.mean * m.mean));
    return m;
}

// Numbers equal to float precision (GGUF stores f32), everything else exactly.
void check_json_equal(const nlohmann::json& a, const nlohmann::json& b, const std::string& where) {
    if (a.is_number() && b.is_number()) {
        const double x = a.get<double>(), y = b.get<double>();
        CHECK_MESSAGE(std::abs(x - y) <= 1e-6 * std::max(1.0, std::abs(x)), where, ": ", x, " vs ", y);
    } else if (a.is_object() && b.is_object()) {
        for (const auto& [key, value] : a.items()) {
            CHECK_MESSAGE(b.contains(key), where, ".", key, " missing");
            if (b.contains(key)) check_json_equal(value, b[key], where + "." + key);
        }
        for (const auto& [key, value] : b.items()) CHECK_MESSAGE(a.contains(key), where, ".", key, " extra");
    } else {
        CHECK_MESSAGE(a == b, where, ": ", a.dump(), " vs ", b.dump());
    }
}

std::string run_capture(const std::string& command) {
    const auto r = test::run_command(command);
    CHECK_MESSAGE(r.status == 0, command, " exited with ", r.status, ": ", r.out);
    return r.out;
}

}  // namespace

TEST_CASE("random blocks of every supported type dequantise to finite zero-mean values of the requested std") {
    const double target = 0.02;
    for (DType type : {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                       DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
        CAPTURE(dtype_name(type));
        REQUIRE(random_blocks_supported(type));
        const auto& traits = block_type(type);
        const int64_t n = 1 << 18;
        const int64_t n_blocks = n / traits.block_elems;
        std::vector<uint8_t> bytes(size_t(n_blocks * traits.block_bytes));
        fill_random_blocks(type, RandomFill::gaussian_like, target, 42, 0, bytes.data(), n_blocks);
        const Moments m = moments(dequantize(type, bytes.data(), n));
        CHECK(m.finite);
        // Sampling error of the mean is ~ std / sqrt(n) = 0.002 std; 5x that, with room for
        // the sub-block scale correlation of Q3_K.
        CHECK(std::abs(m.mean) < 0.01 * m.std);
        CHECK(m.std == doctest::Approx(target).epsilon(0.03));
    }
}

TEST_CASE("random K-quant and Q8_0 scales are normal fp16 numbers and the bias is centred per sub-block") {
    std::vector<quant::BlockQ4_K> q4(64);
    fill_random_blocks(DType::Q4_K, RandomFill::gaussian_like, 0.01, 1, 0, q4.data(), 64);
    for (const auto& b : q4) {
        const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
        CHECK(std::isnormal(d));
        CHECK(std::isnormal(dmin));
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            quant::k4_scale_min(j, b.scales, sc, m);
            CHECK(sc > 0);
            // d * sc * 7.5 == dmin * m: the sub-block's values d*sc*q - dmin*m centre on 0.
            CHECK(double(dmin) * m == doctest::Approx(double(d) * sc * 7.5));
        }
    }
    std::vector<quant::BlockQ8_0> q8(64);
    fill_random_blocks(DType::Q8_0, RandomFill::gaussian_like, 0.01, 1, 0, q8.data(), 64);
    int negative = 0;
    for (const auto& b : q8) {
        CHECK(std::isnormal(f16_to_f32(b.d)));
        negative += f16_to_f32(b.d) < 0;
    }
    CHECK(negative > 8);  // scale signs are random: zero mean
    CHECK(negative < 56);
}

TEST_CASE("random blocks filled in pieces equal the blocks filled in one call") {
    const int64_t n_blocks = 100;
    std::vector<quant::BlockQ6_K> whole(n_blocks), pieces(n_blocks);
    fill_random_blocks(DType::Q6_K, RandomFill::gaussian_like, 0.05, 9, 0, whole.data(), n_blocks);
    fill_random_blocks(DType::Q6_K, RandomFill::gaussian_like, 0.05, 9, 37, pieces.data() + 37, n_blocks - 37);
    fill_random_blocks(DType::Q6_K, RandomFill::gaussian_like, 0.05, 9, 0, pieces.data(), 37);
    CHECK(std::memcmp(whole.data(), pieces.data(), sizeof(quant::BlockQ6_K) * n_blocks) == 0);
    std::vector<quant::BlockQ6_K> other_seed(n_blocks);
    fill_random_blocks(DType::Q6_K, RandomFill::gaussian_like, 0.05, 10, 0, other_seed.data(), n_blocks);
    CHECK(std::memcmp(whole.data(), other_seed.data(), sizeof(quant::BlockQ6_K) * n_blocks) != 0);
}

TEST_CASE("a std too small for normal fp16 scales, ones in a quantised type, and unsupported types are refused") {
    std::vector<quant::BlockQ8_0> q8(1);
    CHECK_THROWS_WITH_AS(fill_random_blocks(DType::Q8_0, RandomFill::gaussian_like, 1e-7, 0, 0, q8.data(), 1),
                         doctest::Contains("fp16 normal range"), Error);
    CHECK_THROWS_AS(fill_random_blocks(DType::Q8_0, RandomFill::ones, 0, 0, 0, q8.data(), 1), Error);
    CHECK_FALSE(random_blocks_supported(DType::IQ4_XS));
    CHECK_THROWS_WITH_AS(fill_random_blocks(DType::IQ4_XS, RandomFill::gaussian_like, 0.1, 0, 0, q8.data(), 1),
                         doctest::Contains("IQ4_XS"), Error);
}

TEST_CASE("a synthetic GGUF is layer-ordered, aligned to 4096 and its deepseek2 config round-trips") {
    const GgufSynthOptions options = tiny_options(tiny_gguf());
    const gguf::GgufModel model = gguf::open_gguf(tiny_gguf().string());
    const gguf::GgufFile& file = model.splits().front();
    CHECK(file.alignment == 4096);
    CHECK(file.data_offset % 4096 == 0);
    CHECK(model.metadata().get_string("general.architecture") == "deepseek2");

    const auto plan = synth_gguf_tensors(options);
    REQUIRE(file.tensors.size() == plan.size());
    CHECK(file.tensors.front().name == "token_embd.weight");
    CHECK(file.tensors.back().name == "output.weight");
    int last_layer = -1;
    uint64_t last_offset = 0;
    for (size_t i = 0; i < plan.size(); ++i) {
        const auto& t = file.tensors[i];
        CAPTURE(t.name);
        CHECK(t.name == plan[i].name);
        CHECK(t.type == plan[i].type);
        CHECK(t.extent.offset % 4096 == 0);
        CHECK(t.extent.offset >= last_offset);  // file order is declaration order
        last_offset = t.extent.offset;
        if (t.name.rfind("blk.", 0) == 0) {
            const int layer = std::stoi(t.name.substr(4));
            CHECK(layer >= last_layer);  // layer-ordered
            last_layer = layer;
        }
    }
    CHECK(last_layer == options.config.n_layers - 1);
    // MLA-era form as llama.cpp writes it; dense layer 0, MoE layers after it.
    CHECK(model.tensor("blk.0.attn_k_b.weight").type == DType::Q8_0);  // rows of 32: the fallback
    CHECK(model.tensor("blk.0.attn_v_b.weight").type == DType::Q6_K);
    CHECK(model.find_tensor("blk.0.ffn_gate_inp.weight") == nullptr);
    CHECK(model.tensor("blk.1.ffn_gate_exps.weight").ne[2] == 8);
    CHECK(model.tensor("blk.1.ffn_gate_exps.weight").type == DType::Q4_K);
    CHECK(model.tensor("blk.1.ffn_gate_inp.weight").type == DType::F32);
    CHECK(model.tensor("blk.2.exp_probs_b.bias").type == DType::F32);

    ModelConfig expected = options.config;
    ModelConfig read = model_config_from_gguf(model);
    nlohmann::json a = expected.to_json(), b = read.to_json();
    for (const char* informational : {"architectures", "torch_dtype"}) {
        a.erase(informational);
        b.erase(informational);
    }
    check_json_equal(a, b, "config");
}

TEST_CASE("every tensor of a synthetic GGUF dequantises to finite values: norms 1, weights zero-mean at 1/sqrt(fan_in)") {
    const GgufSynthOptions options = tiny_options(tiny_gguf());
    const gguf::GgufModel model = gguf::open_gguf(tiny_gguf().string());
    GgufSource source(gguf::open_gguf(tiny_gguf().string()));
    for (const GgufSynthTensor& spec : synth_gguf_tensors(options)) {
        CAPTURE(spec.name);
        const gguf::TensorInfo& info = model.tensor(spec.name);
        const SourceTensor* st = source.find(spec.name);
        REQUIRE(st != nullptr);
        std::vector<std::byte> bytes(info.size_bytes);
        source.read(*st, bytes);
        const std::vector<float> values = dequantize(info.type, bytes.data(), info.element_count());
        const Moments m = moments(values);
        REQUIRE(m.finite);
        if (spec.fill == RandomFill::ones) {
            CHECK(m.mean == 1.0);
            CHECK(m.std == 0.0);
            continue;
        }
        if (values.size() < 4096) continue;  // too few values for a sharp statistical check
        CHECK(std::abs(m.mean) < 6.0 * m.std / std::sqrt(double(values.size())) + 1e-9);
        CHECK(m.std == doctest::Approx(spec.std).epsilon(0.05));
    }
}

TEST_CASE("the synthetic GGUF's tokenizer encodes like the HF DeepSeek-V3 tokenizer") {
    const gguf::GgufModel model = gguf::open_gguf(tiny_gguf().string());
    const Tokenizer from_gguf = tokenizer_from_gguf(model);
    const Tokenizer from_hf = Tokenizer::from_hf_json((shared_tokenizer() / "tokenizer.json").string());
    CHECK(from_gguf.n_vocab() == 129280);  // padded to the model's vocab_size as llama.cpp does
    CHECK(from_gguf.bos_id() == 0);
    CHECK(from_gguf.eos_id() == 1);
    CHECK(model.metadata().get_string("tokenizer.ggml.pre") == "deepseek-v3");
    CHECK(model.metadata().has("tokenizer.chat_template"));
    CHECK(model.metadata().get_string_array("tokenizer.ggml.tokens").at(129279) == "[PAD129279]");
    for (const char* text : {"The capital of France is", "Hello, world! 12345 + 678 = 13023",
                             "  leading spaces and\ttabs\nnewlines", "深度求索是一家人工智能公司。",
                             "<｜User｜>Hi<｜Assistant｜>", "naïve café — emoji 🙂 and code: for (i=0;i<n;++i) {}"}) {
        CAPTURE(text);
        CHECK(from_gguf.encode(text, true) == from_hf.encode(text, true));
    }
}

TEST_CASE("sluice run generates from a synthetic GGUF and its router picks different experts for different tokens") {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const fs::path stats = fs::temp_directory_path() / fmt::format("sluice_synth_gguf_stats_{}.json", ::getpid());
    const std::string out = run_capture(fmt::format(
        "'{}' run -m '{}' -p 'one two three four five six seven eight nine ten' -n 4 -t 2 --resident none "
        "--no-speculate --stats-json '{}' 2>&1",
        bin, tiny_gguf().string(), stats.string()));
    const auto at = out.find("generated ids: ");
    REQUIRE_MESSAGE(at != std::string::npos, out);
    const std::string ids = out.substr(at + 15, out.find('\n', at) - at - 15);
    CHECK(std::count(ids.begin(), ids.end(), ',') == 3);  // four tokens

    // The prompt step routes 11 tokens through 2 MoE layers of 8 experts, top 2. Routing every
    // token alike (what non-zero-mean weights cause) needs 2 per layer: 4.
    std::ifstream in(stats);
    std::string first_line;
    REQUIRE(std::getline(in, first_line));
    const auto step0 = nlohmann::json::parse(first_line);
    CAPTURE(first_line);
    CHECK(step0.at("experts_needed").get<int>() >= 8);
    // The last line holds the routing counts (`sluice plan --routing` reads them): per layer and
    // expert the steps that needed it, which add up to the steps' experts_needed.
    int64_t needed_in_steps = 0, steps = 1;
    needed_in_steps += step0.at("experts_needed").get<int64_t>();
    std::string line, last;
    while (std::getline(in, line)) {
        if (line.find("\"routing\"") != std::string::npos) {
            last = line;
            break;
        }
        needed_in_steps += nlohmann::json::parse(line).at("experts_needed").get<int64_t>();
        ++steps;
    }
    REQUIRE_MESSAGE(!last.empty(), "no routing line");
    const auto routing = nlohmann::json::parse(last).at("routing");
    CHECK(routing.at("steps").get<int64_t>() == steps);
    int64_t needed_in_routing = 0;
    for (const auto& layer : routing.at("needed"))
        for (const auto& v : layer) needed_in_routing += v.get<int64_t>();
    CHECK(needed_in_routing == needed_in_steps);
    in.close();
    std::error_code ec;
    fs::remove(stats, ec);
}

TEST_CASE("a type whose blocks do not fit a tensor's rows is refused naming the tensor, type and row length") {
    GgufSynthOptions o;
    o.config = synth_preset("tiny");  // hidden 64: no K-quant fits
    o.output_path = fs::temp_directory_path() / "never_written.gguf";
    o.tokenizer_dir = shared_tokenizer();
    CHECK_THROWS_WITH_AS(synth_gguf_tensors(o), doctest::Contains("'token_embd.weight': type Q4_K needs rows that are a "
                                                                 "multiple of 256 values, and ne[0] is 64"),
                         Error);
    o.expert_type = o.dense_type = o.embed_type = o.head_type = DType::Q8_0;
    CHECK_NOTHROW(synth_gguf_tensors(o));
    o.expert_type = DType::IQ4_XS;
    CHECK_THROWS_WITH_AS(synth_gguf_tensors(o), doctest::Contains("no random-block generator"), Error);
    CHECK_THROWS_WITH_AS(parse_synth_dtype("q4_k_m"), doctest::Contains("not one of"), Error);
    CHECK(parse_synth_dtype("q4_k") == DType::Q4_K);
    CHECK(parse_synth_dtype("BF16") == DType::BF16);
    CHECK_FALSE(fs::exists(o.output_path));
}
