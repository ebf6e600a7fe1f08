// Picks the next token from logits: greedy (temperature 0) or sampled with temperature,
// top-k and top-p (nucleus), from a seeded generator so a run can be repeated exactly.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

namespace sluice {

struct SamplerOptions {
    float temperature = 0.0f;  // 0: greedy
    int top_k = 0;             // 0: no top-k cut
    float top_p = 1.0f;        // 1: no nucleus cut
    uint64_t seed = 0;
    // Ids >= this are never produced (padding rows of the embedding; spec §2.12). 0: no mask.
    int64_t n_valid_ids = 0;
};

// Candidate ids and weights over the vocabulary, allocated once; samplers that draw one after
// another (the sequences of a batch) can share one.
struct SamplerScratch {
    explicit SamplerScratch(int64_t n_vocab) : order(size_t(n_vocab)), probs(size_t(n_vocab)) {}
    std::vector<int32_t> order;
    std::vector<float> probs;
};

class Sampler {
public:
    Sampler(const SamplerOptions& options, int64_t n_vocab);
    // Draws with `shared`'s buffers (which must cover n_vocab and outlive the sampler).
    Sampler(const SamplerOptions& options, int64_t n_vocab, SamplerScratch& shared);
    int32_t sample(const float* logits);

private:
    void validate();

    SamplerOptions options_;
    int64_t n_vocab_;
    std::mt19937_64 rng_;
    std::unique_ptr<SamplerScratch> own_scratch_;
    SamplerScratch* scratch_;
};

// Index of the largest logit, lowest index on ties.
int32_t argmax(const float* logits, int64_t n);

}  // namespace sluice
