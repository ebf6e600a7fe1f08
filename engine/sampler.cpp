#include "engine/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"

namespace sluice {

namespace {

// Draws rank i < keep with probability weight(i) / sum of the first `keep` weights.
template <typename Weight>
int64_t draw_rank(int64_t keep, Weight&& weight, std::mt19937_64& rng) {
    double kept = 0;
    for (int64_t i = 0; i < keep; ++i) kept += weight(i);
    std::uniform_real_distribution<double> uniform(0.0, kept);
    double r = uniform(rng);
    for (int64_t i = 0; i < keep; ++i) {
        r -= weight(i);
        if (r < 0) return i;
    }
    return keep - 1;
}

}  // namespace

int32_t argmax(const float* logits, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
        if (logits[i] > logits[best]) best = i;
    return int32_t(best);
}

Sampler::Sampler(const SamplerOptions& options, int64_t n_vocab)
    : options_(options), n_vocab_(n_vocab), rng_(options.seed),
      own_scratch_(std::make_unique<SamplerScratch>(n_vocab)), scratch_(own_scratch_.get()) {
    validate();
}

Sampler::Sampler(const SamplerOptions& options, int64_t n_vocab, SamplerScratch& shared)
    : options_(options), n_vocab_(n_vocab), rng_(options.seed), scratch_(&shared) {
    if (int64_t(shared.order.size()) < n_vocab) fail(ErrorKind::internal, "sampler scratch smaller than the vocabulary");
    validate();
}

void Sampler::validate() {
    if (options_.temperature < 0) fail(ErrorKind::invalid_input, "temperature must be >= 0, got {}", options_.temperature);
    if (options_.top_p <= 0 || options_.top_p > 1) fail(ErrorKind::invalid_input, "top-p must be in (0, 1], got {}", options_.top_p);
    if (options_.top_k < 0) fail(ErrorKind::invalid_input, "top-k must be >= 0, got {}", options_.top_k);
    if (options_.n_valid_ids > 0 && options_.n_valid_ids < n_vocab_) n_vocab_ = options_.n_valid_ids;
}

int32_t Sampler::sample(const float* logits) {
    if (options_.temperature == 0.0f) return argmax(logits, n_vocab_);
    auto& order_ = scratch_->order;
    auto& probs_ = scratch_->probs;
    const float inv_t = 1.0f / options_.temperature;
    auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };

    if (options_.top_k == 0) {
        // No top-k cut: weights over the whole vocabulary in id order (no sort of 129k ids per token).
        const float top = logits[argmax(logits, n_vocab_)] * inv_t;
        double sum = 0;
        for (int64_t i = 0; i < n_vocab_; ++i) {
            probs_[size_t(i)] = std::exp(logits[i] * inv_t - top);
            sum += probs_[size_t(i)];
        }
        if (options_.top_p >= 1.0f)
            return int32_t(draw_rank(n_vocab_, [&](int64_t i) { return double(probs_[size_t(i)]); }, rng_));
        // Nucleus: the smallest best-first prefix reaching top_p. Sort only a growing head of the
        // ranking (the nucleus is usually a few dozen ids); a sorted head of the full ranking gives
        // the same prefix as sorting everything.
        std::iota(order_.begin(), order_.begin() + n_vocab_, 0);
        const double need = double(options_.top_p) * sum;
        int64_t sorted = 0, head = std::min<int64_t>(64, n_vocab_);
        double acc = 0;
        int64_t keep = n_vocab_;
        for (;;) {
            std::partial_sort(order_.begin() + sorted, order_.begin() + head, order_.begin() + n_vocab_, better);
            for (; sorted < head; ++sorted) {
                acc += probs_[size_t(order_[size_t(sorted)])];
                if (acc >= need) break;
            }
            if (sorted < head) {
                keep = sorted + 1;
                break;
            }
            if (head == n_vocab_) break;
            head = std::min<int64_t>(head * 4, n_vocab_);
        }
        return order_[size_t(draw_rank(keep, [&](int64_t i) { return double(probs_[size_t(order_[size_t(i)])]); }, rng_))];
    }

    // Top-k candidates sorted by logit, highest first; ties by lower id.
    const int64_t k = std::min<int64_t>(options_.top_k, n_vocab_);
    std::iota(order_.begin(), order_.begin() + n_vocab_, 0);
    std::partial_sort(order_.begin(), order_.begin() + k, order_.begin() + n_vocab_, better);

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
    return order_[size_t(draw_rank(keep, [&](int64_t i) { return double(probs_[size_t(i)]); }, rng_))];
}

}  // namespace sluice
