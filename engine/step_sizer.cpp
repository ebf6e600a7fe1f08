#include "engine/step_sizer.hpp"

#include <algorithm>
#include <cmath>

namespace sluice {

namespace {

// Recent steps weigh most: the cost per token drifts as the caches' positions grow and as the
// expert cache warms. 0.95 keeps about the last 20 steps: timing noise on a shared machine is a
// second or more a step, and fewer steps let it tilt the fit.
constexpr double kKeep = 0.95;
// The weight (in steps) a fit needs: below it two or three points fit anything.
constexpr double kMinWeight = 5;
// A count varies enough to fit a cost per token when its weighted spread is at least this share of
// the mean step size (and at least kMinSpread tokens): below it, timing noise (a second or more a
// step on a shared machine) swamps the slope.
constexpr double kMinRelativeSpread = 0.1;
constexpr double kMinSpread = 4.0;
// Decode and prompt counts are fitted apart only when they are not nearly proportional to each
// other (squared correlation at most this): a scheduler that fills each step to the same target
// trades one for the other, and then only their sum is measured.
constexpr double kMaxCorrelation2 = 0.8;

}  // namespace

void StepSizer::observe(int64_t n_decode, int64_t n_prefill, double read_seconds, double compute_seconds) {
    const int64_t n_tokens = n_decode + n_prefill;
    if (n_tokens <= 0 || !std::isfinite(read_seconds) || !std::isfinite(compute_seconds)) return;
    const double per_token = compute_seconds / double(n_tokens);
    if (n_observed_++ == 0) {
        read_s_ = read_seconds;
        compute_s_per_token_ = per_token;
    } else {
        read_s_ += (1 - kKeep) * (read_seconds - read_s_);
        compute_s_per_token_ += (1 - kKeep) * (per_token - compute_s_per_token_);
    }
    const double d = double(n_decode), p = double(n_prefill), y = compute_seconds;
    w_ = kKeep * w_ + 1;
    d_ = kKeep * d_ + d;
    p_ = kKeep * p_ + p;
    y_ = kKeep * y_ + y;
    dd_ = kKeep * dd_ + d * d;
    pp_ = kKeep * pp_ + p * p;
    dp_ = kKeep * dp_ + d * p;
    dy_ = kKeep * dy_ + d * y;
    py_ = kKeep * py_ + p * y;
    refit();
}

void StepSizer::refit() {
    if (w_ < kMinWeight) return;
    const double md = d_ / w_, mp = p_ / w_, my = y_ / w_;
    // Weighted (co)variances about the means.
    const double cdd = std::max(0.0, dd_ / w_ - md * md), cpp = std::max(0.0, pp_ / w_ - mp * mp);
    const double cdp = dp_ / w_ - md * mp, cdy = dy_ / w_ - md * my, cpy = py_ / w_ - mp * my;
    const double spread = std::max(kMinSpread, kMinRelativeSpread * (md + mp));
    const double min_var = spread * spread;
    auto accept = [&](const CostModel& m) {
        if (!(m.fixed_s >= 0 && m.per_decode_s > 0 && m.per_prompt_s > 0) || !std::isfinite(m.fixed_s) ||
            !std::isfinite(m.per_decode_s) || !std::isfinite(m.per_prompt_s))
            return false;
        model_ = m;
        return true;
    };
    // Decode and prompt tokens apart, when both vary and not in lockstep.
    const double det = cdd * cpp - cdp * cdp;
    if (cdd >= min_var && cpp >= min_var && det >= (1 - kMaxCorrelation2) * cdd * cpp) {
        CostModel m;
        m.per_decode_s = (cdy * cpp - cpy * cdp) / det;
        m.per_prompt_s = (cpy * cdd - cdy * cdp) / det;
        m.fixed_s = my - m.per_decode_s * md - m.per_prompt_s * mp;
        if (accept(m)) return;
    }
    // One cost per token, when the step size varies.
    const double ctt = cdd + cpp + 2 * cdp, cty = cdy + cpy;
    if (ctt >= min_var) {
        CostModel m;
        m.per_decode_s = m.per_prompt_s = cty / ctt;
        m.fixed_s = my - m.per_prompt_s * (md + mp);
        if (accept(m)) return;
    }
    // No fit taken. Steps alike in size say nothing new about the slope, but their compute still moves (other
    // work on the cores, the expert cache warming): the last model keeps its shape (fixed against
    // per-token cost) and is scaled to the recent steps' mean. Kept as it was, a model fitted on
    // the first few steps of a loaded machine held the target at 270 tokens for the rest of a job
    // whose steps (all about their target, once chunks were packed first fit) then computed 7 s of
    // an 11 s read.
    if (!model_) return;
    const double predicted = model_->fixed_s + model_->per_decode_s * md + model_->per_prompt_s * mp;
    if (!(predicted > 0) || !(my > 0)) return;
    const double scale = my / predicted;
    model_->fixed_s *= scale;
    model_->per_decode_s *= scale;
    model_->per_prompt_s *= scale;
}

int64_t StepSizer::target(int64_t n_decode) const {
    if (n_observed_ == 0 || read_s_ <= 0) return max_;
    double tokens = 0;
    if (model_) {
        // fixed + per_decode * d + per_prompt * (t - d) = read, for t.
        const double d = double(std::max<int64_t>(0, n_decode));
        tokens = d + (read_s_ - model_->fixed_s - model_->per_decode_s * d) / model_->per_prompt_s;
    } else {
        if (compute_s_per_token_ <= 0) return max_;
        tokens = read_s_ / compute_s_per_token_;
    }
    if (!std::isfinite(tokens)) return max_;
    return int64_t(std::clamp(tokens, double(min_), double(max_)));
}

}  // namespace sluice
