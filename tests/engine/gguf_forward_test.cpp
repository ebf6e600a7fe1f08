// GGUF models end to end against two outside oracles, on files made by llama.cpp's own converter
// and quantiser (tests/data/llamacpp, scripts/make_llamacpp_fixtures.py):
//  - transformers run on the very weights the file holds (dequantised by gguf-py): sluice computes
//    on the stored blocks with exact dequantisation, so the logits agree to float rounding;
//  - llama.cpp's own logits and greedy tokens on the same file (it quantises activations, so
//    the agreement is stated as a cosine per type).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/generate.hpp"
#include "engine/model_loader.hpp"
#include "formats/npy.hpp"
#include "kernels/cpu/gemm_bf16_tiles.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/ops.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

std::string data_dir() {
    const char* d = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(d, "SLUICE_TEST_DATA is not set");
    return d;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        ab += double(a[i]) * b[i];
        aa += double(a[i]) * a[i];
        bb += double(b[i]) * b[i];
    }
    return ab / std::sqrt(aa * bb);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
}

double max_abs(const std::vector<float>& a) {
    double m = 0;
    for (float x : a) m = std::max(m, double(std::fabs(x)));
    return m;
}

// Cosine with llama.cpp's logits (F32 K/V cache), per file type, measured: F16 0.999999, Q8_0
// 0.99945, Q2_K 0.975 on the tiny model (whose 64-wide rows make the K types fall back to Q4_0/Q5_0)
// and 0.99908 on the small one; Q4_K_M 0.99931 small but 0.99187 tiny: there one prompt position
// (11) alone differs by 1.42 (a routing decision landing the other way), the rest by <= 0.17; with
// llama.cpp's default F16 cache it landed our way (0.9995).
const std::map<std::string, double> kMinCosine = {{"F16", 0.99999}, {"Q8_0", 0.998}, {"Q4_K_M", 0.99}, {"Q2_K", 0.95}};

// The converted GGUFs of tests/data/llamacpp/manifest.json present here, with their model's prompt.
struct ConvertedFile {
    nlohmann::json entry;
    std::string file;
    std::vector<int32_t> prompt;
};
std::vector<ConvertedFile> converted_files() {
    const std::string dir = data_dir() + "/llamacpp";
    std::ifstream in(dir + "/manifest.json");
    REQUIRE(in.good());
    const auto manifest = nlohmann::json::parse(in);
    std::vector<ConvertedFile> files;
    for (const auto& f : manifest["files"]) {
        if (!f.contains("file") || f["file"].is_null() || f.contains("error")) continue;
        const std::string file = dir + "/" + f["file"].get<std::string>();
        if (!fs::exists(file)) continue;
        std::ifstream ein(data_dir() + "/" + f["model"].get<std::string>() + "/expected.json");
        REQUIRE_MESSAGE(ein.good(), file);
        files.push_back({f, file, nlohmann::json::parse(ein)["prompt_ids"].get<std::vector<int32_t>>()});
    }
    return files;
}

}  // namespace

TEST_CASE("GGUF files from llama.cpp's converter and quantiser match transformers and llama.cpp") {
    int checked = 0;
    for (const auto& [f, file, prompt] : converted_files()) {
        const std::string model_name = f["model"];
        const std::string type = f["type"];
        CAPTURE(file);

        const auto model = load_model(file);
        const int64_t vocab = model->layout().vocab;
        // llama.cpp's converter splits kv_b into attn_k_b / attn_v_b: the forward needs its W_UK buffer
        CHECK(model->layout().split_kv_b == (model->open->source->find("blk.0.attn_k_b.weight") != nullptr));
        ThreadPool pool(2);
        // The default fused path quantises activations like llama.cpp, and is held to the same
        // cosine against the exact path as llama.cpp's own logits are (these random tiny models
        // amplify activation rounding: llama.cpp itself is at 0.9995 / 0.974 on Q8_0 / tiny Q2_K).
        std::vector<float> fused(prompt.size() * size_t(vocab));
        {
            cpu::set_quant_dot(cpu::QuantDot::fused);
            DeepseekForward fw(model->layout(), *model->provider, ForwardOptions{RunShape{1, 64, 64}}, pool);
            fw.forward(prompt, true, fused.data());
        }
        cpu::set_quant_dot(cpu::QuantDot::exact);
        DeepseekForward forward(model->layout(), *model->provider, ForwardOptions{RunShape{1, 64, 64}}, pool);
        std::vector<float> logits(prompt.size() * size_t(vocab));
        forward.forward(prompt, true, logits.data());
        const double fused_cos = cosine(fused, logits);
        MESSAGE(f["file"].get<std::string>() << ": fused (8-bit activations) vs exact cosine " << fused_cos);
        CHECK(fused_cos >= kMinCosine.at(type));

        const std::string stem = file.substr(0, file.size() - 5);
        if (fs::exists(stem + ".hf_dequant_logits.npy")) {
            const auto exact = read_npy_f32(stem + ".hf_dequant_logits.npy");
            const double d = max_abs_diff(logits, exact.data);
            MESSAGE(f["file"].get<std::string>() << ": max |sluice - transformers on the dequantised weights| = " << d);
            CHECK(d <= 2e-5 * max_abs(exact.data));
        } else if (type == "F16") {
            // F16 weights: transformers' F32 logits differ only by the F16 rounding of the weights.
            const auto hf = read_npy_f32(data_dir() + "/" + model_name + "/logits.npy");
            CHECK(cosine(logits, hf.data) >= 0.99999);
        }
        if (fs::exists(stem + ".logits.npy")) {
            const auto llama = read_npy_f32(stem + ".logits.npy");
            const double c = cosine(logits, llama.data);
            MESSAGE(f["file"].get<std::string>() << ": cosine with llama.cpp = " << c << " (fused path: "
                                                  << cosine(fused, llama.data) << ")");
            CHECK(c >= kMinCosine.at(type));
        }
        if (type == "F16" && model_name.rfind("hf_tiny", 0) == 0) {
            // And from F16 weights our own greedy run is transformers' (F32) greedy run.
            std::ifstream gin(data_dir() + "/" + model_name + "/expected.json");
            const auto want = nlohmann::json::parse(gin)["greedy_ids"].get<std::vector<int32_t>>();
            forward.truncate(0);
            GenerateOptions go;
            go.max_new_tokens = 16;
            go.stop_at_eos = false;
            std::vector<int32_t> ours;
            generate(forward, prompt, go, [&](int32_t id) { ours.push_back(id); });
            CHECK(ours == std::vector<int32_t>(want.begin(), want.begin() + 16));
        }
        ++checked;
    }
    CHECK(checked >= 6);
}

namespace {

struct GreedyRun {
    std::vector<int32_t> ids;
    std::vector<float> step_logits;  // [steps, vocab]: the logits each step chose from
};

// A free-running greedy generation: prefill, then each step feeds back our own argmax.
GreedyRun greedy_run(DeepseekForward& forward, const std::vector<int32_t>& prompt, size_t steps, int64_t vocab) {
    GreedyRun run;
    run.step_logits.resize(steps * size_t(vocab));
    forward.truncate(0);
    forward.forward(prompt, false, run.step_logits.data());
    for (size_t i = 0; i < steps; ++i) {
        float* row = run.step_logits.data() + i * size_t(vocab);
        run.ids.push_back(int32_t(std::max_element(row, row + vocab) - row));
        if (i + 1 < steps) forward.forward(std::span<const int32_t>(&run.ids.back(), 1), false, row + vocab);
    }
    return run;
}

}  // namespace

// llama.cpp's greedy run (tests/data/llamacpp/manifest.json) against ours, both free-running for
// 16 steps from the same prompt. llama.cpp ran in its most precise settings, F32 K/V cache and no
// flash attention: with its default F16 cache, the rounding of the cached latent flipped a routing
// near-tie on hf_tiny_v3.F16 (layer 1, decode step 4, two expert groups 4.6e-5 apart), which was
// the unexplained step that differed by more than 1. The prompt is greedy_prompt_ids, chosen by
// the generator from llama.cpp's logits alone (the largest smallest top-2 gap over the 16 steps of
// 2000 seeded random prompts): with the fixture prompt some step has a top-2 gap below the two
// engines' arithmetic difference (up to ~0.01 on F16, ~0.2 with 8-bit activations), and a tie is a
// coin toss. The issue asks for identical tokens on F16 and Q8_0; for the quantised files both our
// dot-product paths must agree: the default fused one (8-bit activations, as llama.cpp) and
// --exact-dot. The other types are reported, and their step logits held to a cosine.
TEST_CASE("the first 16 greedy tokens equal llama.cpp's on the F16 and Q8_0 files, step logits close per type") {
    const std::string dir = data_dir() + "/llamacpp";
    std::ifstream in(dir + "/manifest.json");
    REQUIRE(in.good());
    const auto manifest = nlohmann::json::parse(in);
    REQUIRE(manifest.contains("llama_cpp_context"));
    CHECK(manifest["llama_cpp_context"]["type_k"] == "F32");
    CHECK(manifest["llama_cpp_context"]["type_v"] == "F32");
    CHECK(manifest["llama_cpp_context"]["flash_attn"] == false);
    // Cosine of our step logits with llama.cpp's, all steps on the same prefix taken together, per
    // type (measured: F16 0.999999 (every step); Q8_0 fused 0.9958 / exact 0.9994: the fused run's
    // step 7 alone jumps to |delta| 1.23, the mark of a routing decision landing the other way, its
    // top-1 unchanged; fused Q4_K_M 0.9864 tiny (Q5_0 fallbacks) / 0.9988 small, Q2_K 0.9918 / 0.9991).
    const std::map<std::string, double> min_steps_cosine = {
        {"F16", 0.99999}, {"Q8_0", 0.99}, {"Q4_K_M", 0.98}, {"Q2_K", 0.98}};
    std::map<std::string, int> asserted;
    for (const auto& f : manifest["files"]) {
        if (!f.contains("greedy_logits_file") || f.contains("error")) continue;
        const std::string file = dir + "/" + f["file"].get<std::string>();
        const std::string type = f["type"];
        CAPTURE(file);
        const auto prompt = f["greedy_prompt_ids"].get<std::vector<int32_t>>();
        const auto llama_ids = f["greedy_ids"].get<std::vector<int32_t>>();
        REQUIRE(llama_ids.size() == 16);
        const auto llama_steps = read_npy_f32(dir + "/" + f["greedy_logits_file"].get<std::string>());

        const auto model = load_model(file);
        const int64_t vocab = model->layout().vocab;
        REQUIRE(llama_steps.data.size() == llama_ids.size() * size_t(vocab));
        ThreadPool pool(2);
        const bool quantised = type != "F16";
        // The third run: fused dots with the decode attention's products in bf16 (--attention-precision).
        for (const int run : {0, 1, 2}) {
            const auto mode = run == 1 ? cpu::QuantDot::exact : cpu::QuantDot::fused;
            const bool bf16 = run == 2;
            if (!quantised && mode == cpu::QuantDot::exact) continue;  // F16 has one path
            if (bf16 && !cpu::bf16_attention_supported({int(model->layout().n_heads), int(model->layout().kv_rank),
                                                        int(model->layout().rope_dim), 1.0f})) {
                MESSAGE(f["file"].get<std::string>() << ": no bf16 attention on this CPU or shape; not run");
                continue;
            }
            const std::string path = bf16 ? "fused, bf16 attention" : mode == cpu::QuantDot::fused ? "fused" : "exact";
            CAPTURE(path);
            cpu::set_quant_dot(mode);
            cpu::set_attention_math(bf16 ? cpu::AttentionMath::bf16 : cpu::AttentionMath::f32);
            // llama.cpp runs these files' MLA in the absorbed form (k_b / v_b), so its activations meet
            // the quantised weights at the same points as ours only in that form; the decompressed
            // form (our default for prefill) rounds the cache latents instead of the queries, equally
            // close to transformers (forward_test) but on near-tied tiny models another greedy path.
            DeepseekForward forward(model->layout(), *model->provider,
                                    ForwardOptions{RunShape{1, 64, 64}, AttentionForm::absorbed}, pool);
            const GreedyRun ours = greedy_run(forward, prompt, llama_ids.size(), vocab);

            // The product's generate() (sampler at temperature 0) is the same greedy run.
            forward.truncate(0);
            GenerateOptions go;
            go.max_new_tokens = int64_t(llama_ids.size());
            go.stop_at_eos = false;
            std::vector<int32_t> generated;
            generate(forward, prompt, go, [&](int32_t id) { generated.push_back(id); });
            CHECK(generated == ours.ids);

            size_t agree = 0;
            while (agree < llama_ids.size() && ours.ids[agree] == llama_ids[agree]) ++agree;
            // Step logits are comparable while both runs have fed the same tokens: up to and
            // including the first step that chose differently.
            const size_t compared = std::min(agree + 1, llama_ids.size());
            const std::vector<float> a(ours.step_logits.begin(), ours.step_logits.begin() + compared * size_t(vocab));
            const std::vector<float> b(llama_steps.data.begin(), llama_steps.data.begin() + compared * size_t(vocab));
            double min_step_cos = 1;
            for (size_t i = 0; i < compared; ++i) {
                const auto row = [&](const std::vector<float>& v) {
                    return std::vector<float>(v.begin() + i * size_t(vocab), v.begin() + (i + 1) * size_t(vocab));
                };
                min_step_cos = std::min(min_step_cos, cosine(row(a), row(b)));
            }
            const double steps_cos = cosine(a, b);
            MESSAGE(f["file"].get<std::string>() << " (" << path << "): " << agree
                                                  << " of 16 greedy tokens equal llama.cpp's (free-running); step logits cosine "
                                                  << steps_cos << " (worst step " << min_step_cos << "), max |delta| "
                                                  << max_abs_diff(a, b));
            // Held on both paths for F16/Q8_0; for the K-quant mixes on the fused path, the one that
            // quantises activations as llama.cpp does (exact-dot on hf_small_v3.Q2_K jumps to |delta|
            // 4.3 at step 7 and leaves llama.cpp's run there: reported above).
            if (!quantised || mode == cpu::QuantDot::fused || type == "Q8_0")
                CHECK(steps_cos >= min_steps_cosine.at(type));
            if (type == "F16") CHECK(min_step_cos >= min_steps_cosine.at(type));
            if (type == "F16" || type == "Q8_0") {
                CHECK(ours.ids == llama_ids);
                ++asserted[type];
            }
        }
    }
    cpu::set_quant_dot(cpu::QuantDot::fused);
    cpu::set_attention_math(cpu::AttentionMath::f32);
    CHECK(asserted["F16"] >= 2);   // hf_tiny_v3 and hf_tiny_v3_shared3
    CHECK(asserted["Q8_0"] >= 2);  // hf_tiny_v3, fused and exact
}

// The decompressed form (our prefill) under --attention-precision bf16: keys expanded through W_UK
// turned into bf16 tiles (gemm_bf16_tiles), the latents rounded to bf16 (relative 2^-9 each), and
// where the shape takes them (hf_small_v3's) the block products in bf16 too. With exact dots
// elsewhere, the prompt's logits must move (the bf16 route ran) and stay within that rounding of
// the f32 form's.
TEST_CASE("the decompressed form with bf16 attention keeps the prompt logits within bf16's rounding of f32's") {
    int checked = 0;
    for (const auto& [f, file, prompt] : converted_files()) {
        CAPTURE(file);
        const auto model = load_model(file);
        const auto& d = model->layout();
        if (!cpu::cpu_has_bf16_attention()) {
            MESSAGE("no AVX-512 BF16 on this CPU (or SLUICE_CPU caps the path): not run");
            return;
        }
        if (!d.split_kv_b || !cpu::bf16_tiles_supported(d.nope, d.kv_rank)) continue;
        ThreadPool pool(2);
        cpu::set_quant_dot(cpu::QuantDot::exact);
        std::vector<float> logits[2];
        for (const int run : {0, 1}) {
            cpu::set_attention_math(run == 1 ? cpu::AttentionMath::bf16 : cpu::AttentionMath::f32);
            DeepseekForward fw(d, *model->provider, ForwardOptions{RunShape{1, 64, 64}, AttentionForm::decompressed}, pool);
            logits[run].resize(prompt.size() * size_t(d.vocab));
            fw.forward(prompt, true, logits[run].data());
        }
        cpu::set_attention_math(cpu::AttentionMath::f32);
        const double diff = max_abs_diff(logits[1], logits[0]), scale = max_abs(logits[0]);
        MESSAGE(f["file"].get<std::string>() << ": decompressed, bf16 against f32: max |logit diff| " << diff
                                              << " of max |logit| " << scale << ", cosine " << cosine(logits[1], logits[0]));
        CHECK(diff > 0);
        // Measured 0.6-1.0% of max |logit| (cosine >= 0.99997): what the bf16 absorbed form moves
        // hf_small_v3's by too (0.7-0.8%); these random models carry a rounding to the logits whole.
        CHECK(diff <= 0.02 * scale);
        CHECK(cosine(logits[1], logits[0]) >= 0.9999);
        ++checked;
    }
    CHECK(checked >= 2);
}

TEST_CASE("a truncated GGUF is refused naming the file before any weight is used") {
    const std::string src = data_dir() + "/llamacpp/hf_tiny_v3.Q8_0.gguf";
    const fs::path cut = fs::temp_directory_path() / "sluice_truncated.gguf";
    fs::copy_file(src, cut, fs::copy_options::overwrite_existing);
    fs::resize_file(cut, fs::file_size(cut) - 1000);
    CHECK_THROWS_WITH_AS(open_model(cut.string()), doctest::Contains("sluice_truncated.gguf"), sluice::Error);
    fs::remove(cut);
}
