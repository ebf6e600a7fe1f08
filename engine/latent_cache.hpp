// Where the MLA latent cache lives (spec §2.7): for every (sequence, layer), the normalised
// latents [capacity, kv_rank] and the roped keys [capacity, rope_dim] of its positions. The
// forward asks for one sequence's cache of one layer at a time, in the order the step said it
// would, and says when it is done with it: ResidentLatentCache hands out backend memory
// allocated once; SpilledLatentCache (engine/spilled_latent_cache.hpp) keeps some layers on disk
// and streams them beside the weights.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend.hpp"
#include "engine/model_layout.hpp"

namespace sluice {

struct LatentCacheEntry {
    float* latent = nullptr;  // [capacity, kv_rank]
    float* rope = nullptr;    // [capacity, rope_dim]
};

// One sequence's part of a step, as the cache sees it.
struct LatentCacheUse {
    int sequence = 0;
    int64_t first_new = 0;   // positions already cached before the step
    int64_t positions = 0;   // positions cached once the step is done (first_new + its tokens)
};

class LatentCache {
public:
    virtual ~LatentCache() = default;

    // Positions each sequence can hold.
    virtual int64_t capacity() const = 0;
    // A step starts: these sequences will be acquired at every layer, in this order.
    virtual void begin_step(std::span<const LatentCacheUse> /*uses*/) {}
    // Sequence `sequence`'s cache at `layer`, in backend memory (waits until it is there).
    virtual LatentCacheEntry acquire(int layer, int sequence) = 0;
    // The forward has written the step's new positions of this cache and read what it needed.
    virtual void release(int /*layer*/, int /*sequence*/) {}
    virtual void end_step() {}
};

// Every (sequence, layer) cache in backend memory, allocated once (n_sequences x n_layers x
// capacity x cache_width floats).
class ResidentLatentCache final : public LatentCache {
public:
    ResidentLatentCache(const ModelLayout& layout, int n_sequences, int64_t capacity, Backend& backend);

    int64_t capacity() const override { return capacity_; }
    LatentCacheEntry acquire(int layer, int sequence) override {
        return entries_[size_t(sequence) * size_t(n_layers_) + size_t(layer)];
    }

private:
    int n_layers_;
    int64_t capacity_;
    std::vector<LatentCacheEntry> entries_;  // [sequence * n_layers + layer]
};

}  // namespace sluice
