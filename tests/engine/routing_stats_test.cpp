// Routing counts: recorded between the forward pass and the weights it asks for without changing
// a number, written and read back in the files `run --stats-json` and `bench --json` write, and
// turned into per-token probabilities that reproduce the counts they came from.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/model_loader.hpp"
#include "engine/routing_stats.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

// Remembers every need_experts call, to compare with what the recorder counted.
class CallLog final : public WeightProvider {
public:
    explicit CallLog(WeightProvider& inner) : inner_(inner) {}
    const ModelWeights& globals() override { return inner_.globals(); }
    const LayerWeights& begin_layer(int layer) override { return inner_.begin_layer(layer); }
    void need_experts(int layer, std::span<const int32_t> experts) override {
        for (int32_t e : experts) calls.emplace_back(layer, e);
        inner_.need_experts(layer, experts);
    }
    int32_t next_expert(int layer, const ExpertWeights** w) override { return inner_.next_expert(layer, w); }
    void end_layer(int layer) override { inner_.end_layer(layer); }
    std::vector<std::pair<int, int32_t>> calls;

private:
    WeightProvider& inner_;
};

}  // namespace

TEST_CASE("the recorder counts every expert request and leaves the logits unchanged") {
    const char* data = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(data, "SLUICE_TEST_DATA is not set");
    const auto model = load_model(std::string(data) + "/hf_tiny_v3");
    const auto& d = model->layout();
    ThreadPool pool(2);
    std::vector<int32_t> prompt = {0, 17, 99, 3, 250, 12, 7, 8, 9, 10, 11};
    std::vector<float> plain(size_t(d.vocab)), recorded(size_t(d.vocab));
    {
        DeepseekForward f(d, *model->provider, ForwardOptions{RunShape{1, 32, 16}}, pool);
        f.forward(prompt, false, plain.data());
    }
    CallLog log(*model->provider);
    RoutingRecorder recorder(log, d);
    DeepseekForward f(d, recorder, ForwardOptions{RunShape{1, 32, 16}}, pool);
    f.forward(prompt, false, recorded.data());
    CHECK(plain == recorded);
    for (int i = 0; i < 3; ++i) {
        const int32_t next = int32_t(i + 40);
        f.forward(std::span<const int32_t>(&next, 1), false, recorded.data());
    }
    const RoutingCounts& c = recorder.counts();
    CHECK(c.steps == 4);
    CHECK(c.tokens == 11 + 3);
    CHECK(c.step_widths == std::vector<std::pair<int64_t, int64_t>>{{11, 1}, {1, 3}});
    std::vector<int64_t> expected(c.needed.size(), 0);
    for (const auto& [layer, e] : log.calls) ++expected[size_t(layer * d.n_experts + e)];
    CHECK(c.needed == expected);
    CHECK(log.calls.size() >= 2 * 4 * size_t(d.router.top_k));  // 2 MoE layers: at least top_k per step each
    for (int64_t e = 0; e < d.n_experts; ++e) CHECK(c.needed[size_t(e)] == 0);  // layer 0 is dense
}

TEST_CASE("routing counts round-trip through the files run and bench write, and a malformed file is refused") {
    RoutingCounts c;
    c.n_layers = 2;
    c.n_experts = 3;
    c.top_k = 1;
    c.steps = 5;
    c.tokens = 9;
    c.step_widths = {{1, 4}, {5, 1}};
    c.needed = {0, 0, 0, 2, 3, 1};
    const fs::path dir = fs::temp_directory_path() / fmt::format("sluice_routing_{}", ::getpid());
    fs::create_directories(dir);
    {
        std::ofstream(dir / "bench.json") << nlohmann::json{{"phases", nlohmann::json::array()}, {"routing", c.to_json()}}.dump(2);
        std::ofstream(dir / "stats.jsonl") << "{\"step\":0}\n{\"step\":1}\n" << nlohmann::json{{"routing", c.to_json()}}.dump() << "\n";
        std::ofstream(dir / "bare.json") << c.to_json().dump();
        std::ofstream(dir / "none.jsonl") << "{\"step\":0}\n";
        auto bad = c.to_json();
        bad["needed"][1] = {2, 3};
        std::ofstream(dir / "bad.json") << bad.dump();
    }
    for (const char* name : {"bench.json", "stats.jsonl", "bare.json"}) {
        CAPTURE(name);
        const RoutingCounts r = RoutingCounts::load((dir / name).string());
        CHECK(r.needed == c.needed);
        CHECK(r.step_widths == c.step_widths);
        CHECK(r.steps == 5);
        CHECK(r.tokens == 9);
    }
    CHECK_THROWS_WITH_AS(RoutingCounts::load((dir / "none.jsonl").string()), doctest::Contains("no routing counts"), Error);
    CHECK_THROWS_WITH_AS(RoutingCounts::load((dir / "bad.json").string()), doctest::Contains("has 2 experts"), Error);
    fs::remove_all(dir);
}

TEST_CASE("per-token probabilities reproduce the counts: needed / steps for one-token steps, else the width equation") {
    RoutingCounts c;
    c.n_layers = 1;
    c.n_experts = 3;
    c.top_k = 1;
    c.steps = 110;
    c.step_widths = {{1, 100}, {16, 10}};
    c.tokens = 100 + 160;
    // p = 0.05: 100 x 0.05 + 10 x (1 - 0.95^16) = 5 + 5.599 = 10.6 expected steps; 11 recorded.
    c.needed = {0, 11, 110};
    const auto p = c.token_probabilities();
    CHECK(p[0] == 0);
    const double expected = 100 * p[1] + 10 * (1 - std::pow(1 - p[1], 16));
    CHECK(expected == doctest::Approx(11).epsilon(1e-9));
    CHECK(p[1] == doctest::Approx(0.0519).epsilon(0.01));
    CHECK(p[2] == doctest::Approx(1.0).epsilon(1e-9));  // needed in every step
    RoutingCounts decode = c;
    decode.step_widths = {{1, 110}};
    decode.tokens = 110;
    CHECK(decode.token_probabilities()[1] == doctest::Approx(11.0 / 110).epsilon(1e-9));
}

TEST_CASE("the recorder counts how many of a one-token step's needed experts the early guess named") {
    const char* data = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(data, "SLUICE_TEST_DATA is not set");
    const auto model = load_model(std::string(data) + "/hf_tiny_v3");
    RoutingRecorder r(*model->provider, model->layout());
    r.begin_step(1);
    const std::vector<int32_t> guess = {0, 1, 2}, needed = {1, 2, 5, 9};
    r.predict_experts(1, guess);
    r.need_experts(1, needed);       // 2 of 4 named
    r.need_experts(2, needed);       // no guess for layer 2: not counted
    r.begin_step(1);
    r.predict_experts(2, std::vector<int32_t>{9});
    r.need_experts(2, std::vector<int32_t>{9, 10});  // 1 of 2
    r.begin_step(5);                                 // wider steps are not counted
    r.predict_experts(1, guess);
    r.need_experts(1, needed);
    CHECK(r.counts().guess_needed == 6);
    CHECK(r.counts().guess_hits == 3);
    const auto back = RoutingCounts::from_json(r.counts().to_json(), "test");
    CHECK(back.guess_needed == 6);
    CHECK(back.guess_hits == 3);
}
