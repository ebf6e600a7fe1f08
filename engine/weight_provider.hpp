// The seam between the forward pass and where weights come from. The forward pass asks for a
// layer's dense part, says which experts its tokens were routed to, and takes each expert as
// soon as it is in memory; the provider decides whether that means a resident view or a read
// from disk into a staging slot (engine/streamer.hpp).
#pragma once

#include <cstdint>
#include <span>

#include "engine/model_weights.hpp"

namespace sluice {

class WeightProvider {
public:
    virtual ~WeightProvider() = default;

    // Embedding, output head, final norm, and every layer's vectors (norms, router bias):
    // always resident.
    virtual const ModelWeights& globals() = 0;

    // Layer `layer` starts: returns its dense weights, waiting until they are in memory.
    virtual const LayerWeights& begin_layer(int layer) = 0;

    // The experts this step's tokens were routed to at `layer` (ascending ids, no repeats).
    virtual void need_experts(int layer, std::span<const int32_t> experts) = 0;

    // Hands out the needed experts one by one in the order they become ready, waiting when
    // none is: returns the expert id and sets *weights, or -1 when all have been handed out.
    virtual int32_t next_expert(int layer, const ExpertWeights** weights) = 0;

    // The layer's compute is done: its dense weights and experts may be released.
    virtual void end_layer(int layer) = 0;

    // A forward chunk (one step over the batch) starts / ends: providers keep per-step figures.
    virtual void begin_step(int64_t /*n_tokens*/) {}
    virtual void end_step() {}
    // The caller's estimate of the tokens its next step will carry (0: unknown, the default), for
    // reads a provider may start before that step begins. Holds until changed.
    virtual void expect_next_step(int64_t /*n_tokens*/) {}

    // The dense weights of `layer` if they are already in memory, without waiting (used to
    // run that layer's router early for speculative prefetch); null otherwise.
    virtual const LayerWeights* peek_layer(int /*layer*/) { return nullptr; }

    // A guess, made before `layer` runs, of the experts it will need (speculative prefetch).
    virtual void predict_experts(int /*layer*/, std::span<const int32_t> /*experts*/) {}
    // Whether the provider wants predictions (saves the router work when it does not).
    virtual bool wants_predictions() const { return false; }
};

// Every weight already in memory (load_resident): no waiting, no reads.
class ResidentWeights final : public WeightProvider {
public:
    explicit ResidentWeights(const ModelWeights& weights) : weights_(weights) {}

    const ModelWeights& globals() override { return weights_; }
    const LayerWeights& begin_layer(int layer) override { return weights_.layers[size_t(layer)]; }
    void need_experts(int, std::span<const int32_t> experts) override {
        needed_ = experts;
        next_ = 0;
    }
    int32_t next_expert(int layer, const ExpertWeights** weights) override {
        if (next_ >= needed_.size()) return -1;
        const int32_t e = needed_[next_++];
        *weights = &weights_.layers[size_t(layer)].experts[size_t(e)];
        return e;
    }
    void end_layer(int) override {}

private:
    const ModelWeights& weights_;
    std::span<const int32_t> needed_;
    size_t next_ = 0;
};

}  // namespace sluice
