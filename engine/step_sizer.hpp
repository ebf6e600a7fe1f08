// How many tokens a step should carry: as many as the GEMMs finish in the time the step's weights
// take to read (the roofline-balanced step of DESIGN.md), from the steps seen so far.
//
// A step's compute is a fixed part (every layer's weights touched once, the threads woken, the
// norms and routing) plus a part per token, and a decode token costs more than a prompt token
// (it computes a logits row over the vocabulary). On the 5-layer DeepSeek-V3-shaped Q4_K model at
// 2 threads: about 1.1 s + 59 ms per decode token + 20 ms per prompt token. Dividing the read time
// by the average cost per token (compute / tokens) counts the fixed part once per token, so a step
// smaller than balanced looks costlier per token and the next target falls further: sluice batch's
// targets sank to their floor while compute was 7 s of a 11 s read-bound step. So the sizer fits
// compute = fixed + per_decode * decode + per_prompt * prompt by least squares over recent steps
// (exponentially weighted) and aims at the size where that equals the read time.
#pragma once

#include <cstdint>
#include <optional>

namespace sluice {

class StepSizer {
public:
    // Compute seconds of a step, as fitted.
    struct CostModel {
        double fixed_s = 0;       // whatever the step carries
        double per_decode_s = 0;  // each decode token
        double per_prompt_s = 0;  // each prompt token
    };

    StepSizer(int64_t min_tokens, int64_t max_tokens) : min_(min_tokens), max_(max_tokens) {}

    // The tokens the next step should carry (in [min, max]) when n_decode of them are decode
    // tokens: the size whose fitted compute equals the read time. Until the steps seen vary enough
    // in size to separate fixed and per-token cost, read time / average compute per token. Before
    // any measurement, and when nothing is read, the largest step.
    int64_t target(int64_t n_decode = 0) const;
    // A step that carried n_decode decode and n_prefill prompt tokens: seconds with reads in flight,
    // seconds of compute.
    void observe(int64_t n_decode, int64_t n_prefill, double read_seconds, double compute_seconds);
    // The cost model target() uses, if the steps seen have given one.
    const std::optional<CostModel>& model() const { return model_; }

private:
    void refit();

    int64_t min_, max_;
    int n_observed_ = 0;
    double read_s_ = 0, compute_s_per_token_ = 0;  // exponential averages
    // Exponentially weighted sums for the least-squares fit: weight, decode, prompt, compute, and
    // their products.
    double w_ = 0, d_ = 0, p_ = 0, y_ = 0, dd_ = 0, pp_ = 0, dp_ = 0, dy_ = 0, py_ = 0;
    // The last fit the steps supported; while later steps are too alike to refit, its shape
    // scaled to their mean compute.
    std::optional<CostModel> model_;
};

}  // namespace sluice
