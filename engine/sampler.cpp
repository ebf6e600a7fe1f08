#include "engine/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace sluice {

int32_t argmax(const float* logits, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
        if (logits[i] > logits[best]) best = i;
    return int32_t(best);
}

Sampler::Sampler(const SamplerOptions& options, int64_t n_vocab)
    : options_(options), n_vocab_(n_vocab), rng_(options.seed), order_(size_t(n_vocab)), probs_(size_t(n_vocab)) {
    if (options_.temperature < 0) fail(ErrorKind::invalid_input, "temperature must be >= 0, got {}", options_.temperature);
    if (options_.top_p <= 0 || options_.top_p > 1) fail(ErrorKind::invalid_input, "top-p must be in (0, 1], got {}", options_.top_p);
    if (options_.top_k < 0) fail(ErrorKind::invalid_input, "top-k must be >= 0, got {}", options_.top_k);
    if (options_.n_valid_ids > 0 && options_.n_valid_ids < n_vocab_) n_vocab_ = options_.n_valid_ids;
}

int32_t Sampler::sample(const float* logits) {
    if (options_.temperature == 0.0f) return argmax(logits, n_vocab_);

    // Candidates: the top_k best (or all), sorted by logit, highest first; ties by lower id.
    const int64_t k = options_.top_k > 0 ? std::min<int64_t>(options_.top_k, n_vocab_) : n_vocab_;
    std::iota(order_.begin(), order_.begin() + n_vocab_, 0);
    auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::partial_sort(order_.begin(), order_.begin() + k, order_.begin() + n_vocab_, better);

    const float inv_t = 1.0f / options_.temperature;
    const float top = logits[order_[0]] * inv_t;
    double sum = 0;
    for (int64_t i = 0; i < k; ++i) {
        probs_[size_t(i)] = std::exp(logits[order_[size_t(i)]] * inv_t - top);
        sum += probs_[size_t(i)];
    }
    // Nucleus: the smallest prefix whose probability reaches top_p.
    int64_t keep = k;
    if (options_.top_p < 1.0f) {
        double acc = 0;
        for (int64_t i = 0; i < k; ++i) {
            acc += probs_[size_t(i)] / sum;
            if (acc >= options_.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    double kept = 0;
    for (int64_t i = 0; i < keep; ++i) kept += probs_[size_t(i)];
    std::uniform_real_distribution<double> uniform(0.0, kept);
    double r = uniform(rng_);
    for (int64_t i = 0; i < keep; ++i) {
        r -= probs_[size_t(i)];
        if (r < 0) return order_[size_t(i)];
    }
    return order_[size_t(keep - 1)];
}

}  // namespace sluice
