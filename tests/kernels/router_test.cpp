#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "kernels/cpu/ops.hpp"

using namespace sluice;
using namespace sluice::cpu;

namespace {

// Logit whose sigmoid is exactly-ish s (so test cases can be written in affinities).
float logit(double s) { return float(std::log(s / (1.0 - s))); }

struct Routed {
    std::vector<int> ids;
    std::vector<float> weights;
};

Routed run_router(const std::vector<float>& logits, const float* bias, const RouterConfig& config) {
    Routed r{std::vector<int>(size_t(config.top_k)), std::vector<float>(size_t(config.top_k))};
    route(logits.data(), bias, config, r.ids.data(), r.weights.data());
    return r;
}

// A second, independent formulation of spec §2.10: stable sorts instead of repeated argmax.
Routed reference_router(const std::vector<float>& logits, const std::vector<float>& bias, const RouterConfig& c) {
    const int n = c.n_experts, group_size = n / c.n_group;
    std::vector<float> s(static_cast<size_t>(n)), u(static_cast<size_t>(n));
    for (int e = 0; e < n; ++e) {
        s[size_t(e)] = 1.0f / (1.0f + std::exp(-logits[size_t(e)]));
        u[size_t(e)] = s[size_t(e)] + bias[size_t(e)];
    }
    std::vector<float> group_score(static_cast<size_t>(c.n_group));
    for (int g = 0; g < c.n_group; ++g) {
        std::vector<float> members(u.begin() + g * group_size, u.begin() + (g + 1) * group_size);
        std::sort(members.begin(), members.end(), std::greater<>());
        group_score[size_t(g)] = members[0] + members[1];
    }
    std::vector<int> groups(static_cast<size_t>(c.n_group));
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(),
                     [&](int a, int b) { return group_score[size_t(a)] > group_score[size_t(b)]; });
    std::vector<int> candidates;
    for (int k = 0; k < c.topk_group; ++k)
        for (int e = groups[size_t(k)] * group_size; e < (groups[size_t(k)] + 1) * group_size; ++e)
            candidates.push_back(e);
    std::sort(candidates.begin(), candidates.end());
    std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) { return u[size_t(a)] > u[size_t(b)]; });
    Routed r;
    double sum = 0;
    for (int k = 0; k < c.top_k; ++k) {
        r.ids.push_back(candidates[size_t(k)]);
        sum += s[size_t(candidates[size_t(k)])];
    }
    for (int id : r.ids) r.weights.push_back(float(s[size_t(id)] / sum * c.routed_scaling_factor));
    return r;
}

}  // namespace

TEST_CASE("group limiting changes the selection: only experts of the best top-2-sum groups are chosen") {
    // Groups of 2: sums g0 = 1.0, g1 = 1.2, g2 = 0.4, g3 = 0.95; keep g1 and g0.
    const std::vector<float> logits = {logit(0.9), logit(0.1), logit(0.6), logit(0.6),
                                       logit(0.2), logit(0.2), logit(0.85), logit(0.1)};
    RouterConfig grouped{.n_experts = 8, .top_k = 2, .n_group = 4, .topk_group = 2,
                         .routed_scaling_factor = 2.5f};
    const Routed with_groups = run_router(logits, nullptr, grouped);
    // Expert 6 (0.85) is second best overall but sits in a dropped group; 2 and 3 tie at 0.6 -> 2.
    CHECK(with_groups.ids == std::vector<int>{0, 2});
    CHECK(with_groups.weights[0] == doctest::Approx(0.9 / 1.5 * 2.5).epsilon(1e-6));
    CHECK(with_groups.weights[1] == doctest::Approx(0.6 / 1.5 * 2.5).epsilon(1e-6));

    RouterConfig ungrouped = grouped;
    ungrouped.n_group = 1;
    ungrouped.topk_group = 1;
    CHECK(run_router(logits, nullptr, ungrouped).ids == std::vector<int>{0, 6});
}

TEST_CASE("the correction bias changes which experts are chosen but not their weights") {
    const std::vector<float> logits = {logit(0.8), logit(0.7), logit(0.6), logit(0.1)};
    const std::vector<float> bias = {0.0f, 0.0f, 0.3f, 0.0f};
    RouterConfig c{.n_experts = 4, .top_k = 2, .n_group = 1, .topk_group = 1, .routed_scaling_factor = 1.0f};
    CHECK(run_router(logits, nullptr, c).ids == std::vector<int>{0, 1});
    const Routed biased = run_router(logits, bias.data(), c);
    CHECK(biased.ids == std::vector<int>{2, 0});  // u = 0.9, 0.8
    CHECK(biased.weights[0] == doctest::Approx(0.6 / 1.4).epsilon(1e-6));
    CHECK(biased.weights[1] == doctest::Approx(0.8 / 1.4).epsilon(1e-6));
}

TEST_CASE("equal scores are broken towards the lower expert and group index") {
    const std::vector<float> logits(16, 0.25f);
    RouterConfig c{.n_experts = 16, .top_k = 3, .n_group = 4, .topk_group = 2, .routed_scaling_factor = 1.0f};
    const Routed r = run_router(logits, nullptr, c);
    CHECK(r.ids == std::vector<int>{0, 1, 2});
    for (float w : r.weights) CHECK(w == doctest::Approx(1.0 / 3).epsilon(1e-6));
}

TEST_CASE("V2 softmax gating takes group maxima and leaves the weights unnormalised") {
    // Softmax over all 6, groups of 2 scored by max; keep 2 groups; weights = p * factor.
    const std::vector<float> logits = {1.0f, 0.0f, 3.0f, -1.0f, 2.5f, 2.4f};
    RouterConfig c{.n_experts = 6, .top_k = 2, .n_group = 3, .topk_group = 2,
                   .scoring = RouterConfig::Scoring::softmax, .group_score = RouterConfig::GroupScore::max,
                   .norm_topk_prob = false, .routed_scaling_factor = 16.0f};
    const Routed r = run_router(logits, nullptr, c);
    double z = 0;
    for (float l : logits) z += std::exp(double(l));
    // Group maxima 1.0, 3.0, 2.5 -> keep g1, g2; top-2 of {3.0, -1.0, 2.5, 2.4} = experts 2, 4.
    CHECK(r.ids == std::vector<int>{2, 4});
    CHECK(r.weights[0] == doctest::Approx(std::exp(3.0) / z * 16).epsilon(1e-5));
    CHECK(r.weights[1] == doctest::Approx(std::exp(2.5) / z * 16).epsilon(1e-5));
    // With a top-2 sum of probabilities instead, group 2 (e^2.5 + e^2.4) beats group 1 (e^3 + e^-1).
    c.group_score = RouterConfig::GroupScore::top2_sum;
    CHECK(run_router(logits, nullptr, c).ids == std::vector<int>{2, 4});
    c.topk_group = 1;
    CHECK(run_router(logits, nullptr, c).ids == std::vector<int>{4, 5});
}

TEST_CASE("the V3 router (256 experts, 8 groups, keep 4, top 8) agrees with a sort-based reference") {
    std::mt19937 rng(20);
    std::normal_distribution<float> logit_dist(0.0f, 2.0f);
    std::uniform_real_distribution<float> bias_dist(-0.1f, 0.1f);
    const RouterConfig c;  // defaults are V3
    for (int trial = 0; trial < 200; ++trial) {
        std::vector<float> logits(256), bias(256);
        for (auto& l : logits) l = logit_dist(rng);
        for (auto& b : bias) b = bias_dist(rng);
        const Routed got = run_router(logits, bias.data(), c);
        const Routed want = reference_router(logits, bias, c);
        CAPTURE(trial);
        REQUIRE(got.ids == want.ids);
        float total = 0;
        for (int k = 0; k < 8; ++k) {
            CHECK(got.weights[size_t(k)] == doctest::Approx(want.weights[size_t(k)]).epsilon(1e-5));
            total += got.weights[size_t(k)];
        }
        CHECK(total == doctest::Approx(2.5).epsilon(1e-5));
        std::vector<int> groups;
        for (int id : got.ids) groups.push_back(id / 32);
        std::sort(groups.begin(), groups.end());
        CHECK(std::unique(groups.begin(), groups.end()) - groups.begin() <= 4);
    }
}

TEST_CASE("an inconsistent router config is refused") {
    const std::vector<float> logits(10, 0.0f);
    std::vector<int> ids(8);
    std::vector<float> w(8);
    RouterConfig c{.n_experts = 10, .top_k = 2, .n_group = 4, .topk_group = 2};  // 10 % 4 != 0
    CHECK_THROWS_AS(route(logits.data(), nullptr, c, ids.data(), w.data()), Error);
}
