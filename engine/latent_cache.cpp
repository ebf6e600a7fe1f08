#include "engine/latent_cache.hpp"

namespace sluice {

ResidentLatentCache::ResidentLatentCache(const ModelLayout& d, int n_sequences, int64_t capacity, Backend& backend)
    : n_layers_(d.n_layers), capacity_(capacity) {
    entries_.resize(size_t(n_sequences) * size_t(d.n_layers));
    for (auto& e : entries_) {
        e.latent = backend.alloc_cache_floats(capacity * d.kv_rank);
        e.rope = backend.alloc_cache_floats(capacity * d.rope_dim);
    }
}

}  // namespace sluice
