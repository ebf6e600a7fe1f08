// Which experts a run's steps asked for, per MoE layer and expert: recorded between the forward
// pass and whatever provides the weights, written by `run --stats-json` (a last line
// {"routing": ...}) and `bench --json` ("routing"), and read back by `sluice plan --routing FILE`
// to predict expert reuse from real traffic instead of uniform routing.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model_layout.hpp"
#include "engine/weight_provider.hpp"

namespace sluice {

struct RoutingCounts {
    int n_layers = 0;
    int64_t n_experts = 0;
    int top_k = 0;
    int64_t steps = 0;                 // forward steps (each reaches every layer)
    int64_t tokens = 0;                // tokens over those steps
    // Steps of each width: (tokens in the step, steps of that width), in order of first appearance.
    std::vector<std::pair<int64_t, int64_t>> step_widths;
    // [layer * n_experts + expert]: steps in which the expert was needed (0 for dense layers).
    std::vector<int64_t> needed;
    // Speculation, over one-token steps: of the experts needed by layers that had a guess (the
    // previous layer's router applied early, what the streamer reads ahead), how many the guess
    // named. 0 / 0 when the run made no guesses (everything resident, or --no-speculate) or had no
    // one-token steps. (A wider step's guess is the union of its tokens' guesses: engine/perf_model.)
    int64_t guess_needed = 0;
    int64_t guess_hits = 0;

    // Per-token routing probability p of (layer, expert): under independent tokens, a step of w
    // tokens needs the expert with probability 1 - (1 - p)^w, so p solves
    //   sum over widths w of steps_w * (1 - (1 - p)^w) = needed
    // (exact when every step is one token: p = needed / steps). [layer * n_experts + expert].
    std::vector<double> token_probabilities() const;

    nlohmann::json to_json() const;
    // Reads what to_json wrote; errors (invalid_input) name `source` and the field.
    static RoutingCounts from_json(const nlohmann::json& j, const std::string& source);
    // A file holding it: `bench --json` output, `run --stats-json` lines, or the object itself.
    static RoutingCounts load(const std::string& path);
};

// Forwards every call to `inner` and counts what need_experts asks for. Allocates only at
// construction (and the first time a step width is seen), never per step.
class RoutingRecorder final : public WeightProvider {
public:
    RoutingRecorder(WeightProvider& inner, const ModelLayout& layout);

    const ModelWeights& globals() override { return inner_.globals(); }
    const LayerWeights& begin_layer(int layer) override { return inner_.begin_layer(layer); }
    void need_experts(int layer, std::span<const int32_t> experts) override;
    int32_t next_expert(int layer, const ExpertWeights** weights) override { return inner_.next_expert(layer, weights); }
    void end_layer(int layer) override { inner_.end_layer(layer); }
    void begin_step(int64_t n_tokens) override;
    void end_step() override { inner_.end_step(); }
    void expect_next_step(int64_t n_tokens) override { inner_.expect_next_step(n_tokens); }
    const LayerWeights* peek_layer(int layer) override { return inner_.peek_layer(layer); }
    void predict_experts(int layer, std::span<const int32_t> experts) override;
    bool wants_predictions() const override { return inner_.wants_predictions(); }

    const RoutingCounts& counts() const { return counts_; }

private:
    WeightProvider& inner_;
    RoutingCounts counts_;
    std::vector<uint8_t> guessed_;      // [layer * n_experts + expert]: named by this step's guess
    std::vector<uint8_t> has_guess_;    // [layer]
    int64_t step_tokens_ = 0;
};

}  // namespace sluice
