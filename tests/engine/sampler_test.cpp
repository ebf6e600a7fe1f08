// The sampler against its definition: greedy is the argmax (lowest id on ties), sampling follows
// softmax(logits / T) restricted to the top-k and then the smallest nucleus reaching top-p, and a
// seed repeats a run exactly.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "core/error.hpp"
#include "engine/sampler.hpp"

using namespace sluice;

namespace {

// The nucleus by definition: sort everything best-first, keep the shortest prefix whose
// probability reaches p.
std::set<int32_t> reference_nucleus(const std::vector<float>& logits, float temperature, float top_p) {
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    const double top = logits[size_t(order[0])] / temperature;
    double sum = 0;
    for (float l : logits) sum += std::exp(l / temperature - top);
    std::set<int32_t> keep;
    double acc = 0;
    for (int32_t id : order) {
        keep.insert(id);
        acc += std::exp(logits[size_t(id)] / temperature - top) / sum;
        if (acc >= top_p) break;
    }
    return keep;
}

}  // namespace

TEST_CASE("greedy picks the largest logit and the lowest id on ties") {
    const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
    CHECK(argmax(logits.data(), 4) == 1);
    Sampler greedy({}, 4);
    CHECK(greedy.sample(logits.data()) == 1);
}

TEST_CASE("ids at or beyond n_valid_ids are never produced") {
    const std::vector<float> logits = {0.0f, 0.0f, 9.0f};
    SamplerOptions o;
    o.n_valid_ids = 2;
    CHECK(Sampler(o, 3).sample(logits.data()) == 0);
    o.temperature = 1.0f;
    Sampler s(o, 3);
    for (int i = 0; i < 200; ++i) CHECK(s.sample(logits.data()) < 2);
}

TEST_CASE("sampling at temperature T follows softmax(logits / T)") {
    const std::vector<float> logits = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f};
    const float temperature = 0.7f;
    SamplerOptions o;
    o.temperature = temperature;
    o.seed = 7;
    Sampler s(o, int64_t(logits.size()));
    const int n = 200000;
    std::vector<int> count(logits.size());
    for (int i = 0; i < n; ++i) ++count[size_t(s.sample(logits.data()))];
    double sum = 0;
    for (float l : logits) sum += std::exp(l / temperature);
    for (size_t i = 0; i < logits.size(); ++i) {
        const double p = std::exp(logits[i] / temperature) / sum;
        const double sigma = std::sqrt(p * (1 - p) / n);
        CHECK(std::abs(double(count[i]) / n - p) < 5 * sigma + 1e-4);
    }
}

TEST_CASE("the same seed repeats the same draws; another seed does not") {
    std::vector<float> logits(1000);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    for (auto& l : logits) l = normal(rng);
    auto run = [&](uint64_t seed, int top_k, float top_p) {
        SamplerOptions o{1.0f, top_k, top_p, seed, 0};
        Sampler s(o, int64_t(logits.size()));
        std::vector<int32_t> out;
        for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits.data()));
        return out;
    };
    for (auto [k, p] : {std::pair{0, 1.0f}, std::pair{0, 0.9f}, std::pair{40, 0.95f}}) {
        CHECK(run(5, k, p) == run(5, k, p));
        CHECK(run(5, k, p) != run(6, k, p));
    }
}

TEST_CASE("top-k 1 and a tiny top-p both reduce to the argmax") {
    const std::vector<float> logits = {0.1f, 0.3f, 0.2f, 0.25f};
    SamplerOptions k1{1.0f, 1, 1.0f, 1, 0};
    SamplerOptions p_small{1.0f, 0, 1e-6f, 1, 0};
    Sampler a(k1, 4), b(p_small, 4);
    for (int i = 0; i < 100; ++i) {
        CHECK(a.sample(logits.data()) == 1);
        CHECK(b.sample(logits.data()) == 1);
    }
}

TEST_CASE("top-k draws only from the k best and reaches each of them") {
    const std::vector<float> logits = {3.0f, 0.0f, 2.9f, 2.8f, -5.0f, 2.7f};
    SamplerOptions o{1.0f, 3, 1.0f, 11, 0};
    Sampler s(o, 6);
    std::map<int32_t, int> seen;
    for (int i = 0; i < 3000; ++i) ++seen[s.sample(logits.data())];
    CHECK(seen.size() == 3);
    CHECK(seen.count(0) == 1);
    CHECK(seen.count(2) == 1);
    CHECK(seen.count(3) == 1);
}

TEST_CASE("the nucleus over a real-size vocabulary equals the one found by sorting everything") {
    // A flat-ish distribution over 129280 ids makes the nucleus hundreds of ids long, past the
    // sampler's first sorted head of 64.
    const size_t n_vocab = 129280;
    std::vector<float> logits(n_vocab);
    std::mt19937 rng(9);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    for (auto& l : logits) l = normal(rng);
    // 300 near-equal favourites (every 400th id) far above the rest.
    for (size_t i = 0; i < 300; ++i) logits[i * 400 + 7] = 10.0f + 0.02f * normal(rng);
    for (float top_p : {0.5f, 0.9f}) {
        const auto nucleus = reference_nucleus(logits, 0.8f, top_p);
        CHECK(nucleus.size() > 64);
        SamplerOptions o{0.8f, 0, top_p, 13, 0};
        Sampler s(o, int64_t(n_vocab));
        std::set<int32_t> seen;
        for (int i = 0; i < 4000; ++i) {
            const int32_t id = s.sample(logits.data());
            REQUIRE(nucleus.count(id) == 1);
            seen.insert(id);
        }
        // Most of the nucleus is reached (it is a few hundred near-equal ids).
        CHECK(seen.size() > nucleus.size() / 2);
    }
}

TEST_CASE("bad options are refused") {
    CHECK_THROWS_AS(Sampler(SamplerOptions{-1.0f, 0, 1.0f, 0, 0}, 4), Error);
    CHECK_THROWS_AS(Sampler(SamplerOptions{1.0f, -2, 1.0f, 0, 0}, 4), Error);
    CHECK_THROWS_AS(Sampler(SamplerOptions{1.0f, 0, 0.0f, 0, 0}, 4), Error);
    CHECK_THROWS_AS(Sampler(SamplerOptions{1.0f, 0, 1.5f, 0, 0}, 4), Error);
}
