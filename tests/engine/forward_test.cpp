// The forward pass against Hugging Face transformers: tiny random DeepSeek-V3/V2 models whose
// logits and greedy tokens were recorded by scripts/make_hf_fixtures.py (tests/data/hf_tiny_*).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/generate.hpp"
#include "engine/model_loader.hpp"
#include "formats/npy.hpp"

using namespace sluice;

namespace {

std::string data_dir() {
    const char* d = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(d, "SLUICE_TEST_DATA is not set");
    return d;
}

nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    REQUIRE_MESSAGE(in.good(), path);
    return nlohmann::json::parse(in);
}

// Tolerance for F32 weights: our kernels and torch sum in different orders, nothing else.
constexpr double kRelativeTolerance = 2e-5;  // of max |logit| (measured: 4e-6 to 6e-6 absolute, max |logit| ~4)

struct Fixture {
    std::string dir;
    std::vector<int32_t> prompt;
    std::vector<int32_t> greedy;
    NpyArray logits;
};

Fixture load_fixture(const std::string& name) {
    Fixture f;
    f.dir = data_dir() + "/" + name;
    const auto expected = read_json(f.dir + "/expected.json");
    f.prompt = expected["prompt_ids"].get<std::vector<int32_t>>();
    f.greedy = expected["greedy_ids"].get<std::vector<int32_t>>();
    f.logits = read_npy_f32(f.dir + "/logits.npy");
    return f;
}

double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::max(m, double(std::fabs(x)));
    return m;
}

// Prompt logits and greedy tokens against transformers, in each form of MLA: auto (decompressed
// for prefill, absorbed for decode), absorbed throughout (4 tokens at a time), decompressed
// throughout (expanding 5 positions at a time, so the softmax is carried across blocks).
void check_model(const std::string& name, int64_t batch_tokens) {
    for (AttentionForm form : {AttentionForm::automatic, AttentionForm::absorbed, AttentionForm::decompressed}) {
        const std::string form_label = attention_form_name(form);
        CAPTURE(name);
        CAPTURE(batch_tokens);
        CAPTURE(form_label);
        const Fixture f = load_fixture(name);
        ThreadPool pool(2);
        const auto model = load_model(f.dir);
        const int64_t vocab = model->layout().vocab;
        CHECK_FALSE(model->layout().split_kv_b);  // HF checkpoints keep kv_b_proj whole: no W_UK buffer
        REQUIRE(f.logits.shape == std::vector<int64_t>{int64_t(f.prompt.size()), vocab});

        ForwardOptions options;
        options.shape.positions = 64;
        options.shape.step_tokens = batch_tokens;
        options.attention = form;
        options.decompress_block = form == AttentionForm::decompressed ? 5 : 0;
        options.absorbed_piece = form == AttentionForm::absorbed ? 4 : 0;  // the prompt in pieces of 4 tokens
        DeepseekForward forward(model->layout(), *model->provider, options, pool);
        std::vector<float> logits(f.prompt.size() * size_t(vocab));
        forward.forward(f.prompt, true, logits.data());

        double worst = 0;
        for (size_t i = 0; i < logits.size(); ++i) worst = std::max(worst, double(std::fabs(logits[i] - f.logits.data[i])));
        const double bound = kRelativeTolerance * max_abs(f.logits.data);
        MESSAGE(name << " (" << form_label << "): max |logit - transformers| = " << worst << " (bound " << bound << ")");
        CHECK(worst <= bound);

        // Greedy continuation with the cache, one token per step, against transformers' tokens.
        forward.truncate(0);
        GenerateOptions go;
        go.max_new_tokens = int64_t(f.greedy.size());
        go.stop_at_eos = false;
        std::vector<int32_t> generated;
        generate(forward, f.prompt, go, [&](int32_t id) { generated.push_back(id); });
        CHECK(generated == f.greedy);
    }
}

}  // namespace

TEST_CASE("V3-like tiny model (q_lora, YaRN, 4 groups keep 2, sigmoid router) matches transformers") {
    check_model("hf_tiny_v3", 128);
}

TEST_CASE("V2-Lite-like tiny model (q_proj, softmax greedy routing, 2 shared experts) matches transformers") {
    check_model("hf_tiny_v2lite", 128);
}

TEST_CASE("tiny model with 3 shared experts, 2 dense layers and plain RoPE matches transformers") {
    check_model("hf_tiny_v3_shared3", 128);
}

TEST_CASE("prefill split into chunks of 3 tokens gives the same logits as one chunk") {
    check_model("hf_tiny_v3", 3);
    check_model("hf_tiny_v2lite", 5);
}

TEST_CASE("decoding one token at a time gives the same logits as prefill") {
    const Fixture f = load_fixture("hf_tiny_v3");
    ThreadPool pool(2);
    const auto model = load_model(f.dir);
    const int64_t vocab = model->layout().vocab;
    ForwardOptions options;
    options.shape.positions = 32;
    DeepseekForward forward(model->layout(), *model->provider, options, pool);
    std::vector<float> step(static_cast<size_t>(vocab));
    double worst = 0;
    for (size_t p = 0; p < f.prompt.size(); ++p) {
        forward.forward(std::span<const int32_t>(&f.prompt[p], 1), false, step.data());
        for (int64_t v = 0; v < vocab; ++v)
            worst = std::max(worst, double(std::fabs(step[size_t(v)] - f.logits.data[p * size_t(vocab) + size_t(v)])));
    }
    CHECK(forward.position() == int64_t(f.prompt.size()));
    CHECK(worst <= kRelativeTolerance * max_abs(f.logits.data));
}

TEST_CASE("a full context is refused with a clear error instead of overrunning the cache") {
    const Fixture f = load_fixture("hf_tiny_v3");
    ThreadPool pool(1);
    const auto model = load_model(f.dir);
    ForwardOptions options;
    options.shape.positions = 8;
    DeepseekForward forward(model->layout(), *model->provider, options, pool);
    std::vector<float> logits(size_t(model->layout().vocab));
    CHECK_THROWS_WITH_AS(forward.forward(f.prompt, false, logits.data()),
                         doctest::Contains("context full"), sluice::Error);
    const std::vector<int32_t> bad = {0, int32_t(model->layout().vocab)};
    CHECK_THROWS_WITH_AS(forward.forward(bad, false, logits.data()), doctest::Contains("outside the vocabulary"),
                         sluice::Error);
}

// Three different prompts of a fixture: prefixes of its prompt (9 and 4 tokens), and a reversed copy.
static std::tuple<std::vector<int32_t>, std::vector<int32_t>, std::vector<int32_t>> three_prompts(const Fixture& f) {
    return {std::vector<int32_t>(f.prompt.begin(), f.prompt.begin() + 9), std::vector<int32_t>(f.prompt.rbegin(), f.prompt.rend()),
            std::vector<int32_t>(f.prompt.begin() + 3, f.prompt.begin() + 7)};
}

TEST_CASE("a step over several sequences gives each the logits it gets alone") {
    const Fixture f = load_fixture("hf_tiny_v3");
    ThreadPool pool(2);
    const auto model = load_model(f.dir);
    const int64_t vocab = model->layout().vocab;
    const auto [a, b, c] = three_prompts(f);

    auto alone = [&](const std::vector<int32_t>& p) {
        DeepseekForward fw(model->layout(), *model->provider, ForwardOptions{RunShape{1, 32, 64}}, pool);
        std::vector<float> out(p.size() * size_t(vocab));
        fw.forward(p, true, out.data());
        return out;
    };
    DeepseekForward batched(model->layout(), *model->provider, ForwardOptions{RunShape{3, 32, 64}}, pool);
    const std::vector<SequenceTokens> step = {{2, c, true}, {0, a, true}, {1, b, false}};
    std::vector<float> out((c.size() + a.size() + 1) * size_t(vocab));
    batched.forward_batch(step, out.data());
    CHECK(batched.position(0) == int64_t(a.size()));
    CHECK(batched.position(1) == int64_t(b.size()));
    CHECK(batched.position(2) == int64_t(c.size()));

    const double bound = kRelativeTolerance * max_abs(f.logits.data);
    auto worst_diff = [&](const float* got, const float* want, size_t n) {
        double w = 0;
        for (size_t i = 0; i < n; ++i) w = std::max(w, double(std::fabs(got[i] - want[i])));
        return w;
    };
    const auto la = alone(a), lb = alone(b), lc = alone(c);
    CHECK(worst_diff(out.data(), lc.data(), lc.size()) <= bound);
    CHECK(worst_diff(out.data() + lc.size(), la.data(), la.size()) <= bound);
    CHECK(worst_diff(out.data() + lc.size() + la.size(), lb.data() + (b.size() - 1) * size_t(vocab), size_t(vocab)) <=
          bound);

    // The next step decodes one token for each sequence at its own position.
    const int32_t t0 = 5, t1 = 7;
    const std::vector<SequenceTokens> decode = {{0, {&t0, 1}, false}, {1, {&t1, 1}, false}};
    std::vector<float> next(2 * size_t(vocab));
    batched.forward_batch(decode, next.data());
    std::vector<int32_t> a_next = a;
    a_next.push_back(t0);
    const auto la_next = alone(a_next);
    CHECK(worst_diff(next.data(), la_next.data() + a.size() * size_t(vocab), size_t(vocab)) <= bound);
    CHECK_THROWS_AS(batched.forward_batch(std::vector<SequenceTokens>{{3, a, false}}, next.data()), sluice::Error);
}

TEST_CASE("the absorbed form taken a few tokens at a time gives the same bits as in one piece") {
    const Fixture f = load_fixture("hf_tiny_v3");
    ThreadPool pool(2);
    const auto model = load_model(f.dir);
    const int64_t vocab = model->layout().vocab;
    const auto [a, b, c] = three_prompts(f);
    const int32_t t0 = 5, t1 = 7, t2 = 11;
    auto run = [&](int64_t piece) {
        ForwardOptions options{RunShape{3, 32, 64}};
        options.attention = AttentionForm::absorbed;
        options.absorbed_piece = piece;
        DeepseekForward fw(model->layout(), *model->provider, options, pool);
        // Prefill: groups of 4, 9 and 16 tokens, each longer than a piece of 2 (taken in pieces
        // of its own tokens); then a decode step of three 1-token groups (two whole groups to a piece).
        std::vector<float> out((c.size() + a.size() + b.size() + 3) * size_t(vocab));
        const std::vector<SequenceTokens> prefill = {{2, c, true}, {0, a, true}, {1, b, true}};
        fw.forward_batch(prefill, out.data());
        const std::vector<SequenceTokens> decode = {{0, {&t0, 1}, false}, {1, {&t1, 1}, false}, {2, {&t2, 1}, false}};
        fw.forward_batch(decode, out.data() + (c.size() + a.size() + b.size()) * size_t(vocab));
        return out;
    };
    const auto whole = run(64), pieces = run(2), odd = run(5);
    REQUIRE(whole.size() == pieces.size());
    CHECK(std::memcmp(whole.data(), pieces.data(), whole.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(whole.data(), odd.data(), whole.size() * sizeof(float)) == 0);
}

TEST_CASE("the official FP8 format (e4m3 + 128x128 weight_scale_inv) runs as stored and matches transformers") {
    // tests/data/hf_small_v3_fp8 (scripts/make_fp8_fixture.py): transformers' logits on exactly
    // fp8 * scale_inv. sluice computes on the fp8 bytes with the block scales: float rounding only.
    const std::string dir = data_dir() + "/hf_small_v3_fp8";
    const auto expected = read_npy_f32(dir + "/logits.npy");
    const auto prompt = read_json(dir + "/expected.json")["prompt_ids"].get<std::vector<int32_t>>();
    ThreadPool pool(2);
    const auto model = load_model(dir);
    int fp8_matrices = 0;
    for (const auto& l : model->open->plan.layers)
        for (const auto& t : l.dense.tensors) fp8_matrices += t.type == DType::FP8_E4M3_B128;
    CHECK(fp8_matrices > 0);
    DeepseekForward forward(model->layout(), *model->provider, ForwardOptions{RunShape{1, 32, 32}}, pool);
    std::vector<float> logits(prompt.size() * size_t(model->layout().vocab));
    forward.forward(prompt, true, logits.data());
    double worst = 0;
    for (size_t i = 0; i < logits.size(); ++i) worst = std::max(worst, double(std::fabs(logits[i] - expected.data[i])));
    MESSAGE("FP8: max |logit - transformers on the dequantised weights| = " << worst);
    CHECK(worst <= kRelativeTolerance * max_abs(expected.data));
}
