#include "engine/batch_memory.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/batch_scheduler.hpp"
#include "engine/spilled_latent_cache.hpp"

namespace sluice {

LatentCachePlan plan_latent_cache(const ModelLayout& d, int n_sequences, int64_t capacity, uint64_t cache_ram_bytes) {
    const uint64_t slot = SpilledLatentCache::slot_bytes(d, capacity);
    const uint64_t per_layer = slot * uint64_t(n_sequences);
    if (cache_ram_bytes == 0 || per_layer * uint64_t(d.n_layers) <= cache_ram_bytes) return {d.n_layers, 0};
    LatentCachePlan p;
    p.buffer_bytes = std::max(2 * slot, std::min(2 * per_layer, cache_ram_bytes / 2));
    p.resident_layers = cache_ram_bytes > p.buffer_bytes ? int((cache_ram_bytes - p.buffer_bytes) / per_layer) : 0;
    p.resident_layers = std::min(p.resident_layers, d.n_layers - 1);
    return p;
}

LatentCachePlan spill_all_latent_caches(const ModelLayout& d, int n_sequences, int64_t capacity) {
    const uint64_t slot = SpilledLatentCache::slot_bytes(d, capacity);
    return {0, std::max(2 * slot, std::min(slot * uint64_t(n_sequences), kAutoSpillBufferBytes))};
}

uint64_t full_step_read_bytes(const ModelPlan& model, const MemoryPlan& plan) {
    uint64_t experts = 0, dense = 0;
    for (const auto& l : model.layers) {
        dense += l.dense.bytes();
        for (const auto& e : l.experts) experts += e.bytes();
    }
    const uint64_t cache_entries = uint64_t(std::max(plan.expert_pool.count - plan.expert_slots, 0));
    const uint64_t cached = cache_entries * plan.expert_pool.slot_bytes + plan.resident_expert_bytes;
    return (experts > cached ? experts - cached : 0) + (plan.resident_dense_bytes > 0 ? 0 : dense) +
           plan.mla_spilled_bytes;
}

std::vector<int64_t> batch_step_choices(int64_t max_step_tokens, int max_sequences, int64_t prefill_chunk) {
    if (max_step_tokens > 0) return {max_step_tokens};
    const int64_t least = least_step_tokens(max_sequences, prefill_chunk);
    std::vector<int64_t> choices{std::max(kBatchStepTokens, least)};
    if (kBatchStepTokensFallback > least && kBatchStepTokensFallback < choices.back())
        choices.push_back(kBatchStepTokensFallback);
    if (least < choices.back()) choices.push_back(least);
    return choices;
}

BatchMemoryChoice choose_batch_memory(const ModelPlan& model, int n_layers, const std::vector<int64_t>& step_choices,
                                      const std::vector<LatentCachePlan>& cache_choices,
                                      const std::function<RunMemoryPlan(const LatentCachePlan&, int64_t)>& plan_for) {
    if (step_choices.empty() || cache_choices.empty()) fail(ErrorKind::internal, "a batch job with nothing to plan");
    for (size_t s = 0; s < step_choices.size(); ++s) {
        const int64_t tokens = step_choices[s];
        for (size_t c = 0; c < cache_choices.size(); ++c) {
            const bool last = s + 1 == step_choices.size() && c + 1 == cache_choices.size();
            RunMemoryPlan plan;
            try {
                plan = plan_for(cache_choices[c], tokens);
            } catch (const Error& e) {
                if (e.kind() != ErrorKind::out_of_memory || last) throw;
                continue;
            }
            BatchMemoryChoice choice{cache_choices[c], tokens, {}};
            if (cache_choices[c].resident_layers < n_layers || c + 1 == cache_choices.size()) return choice;
            // Every cache fits in memory: the next plan (spilled) may still read less a step.
            RunMemoryPlan spilled;
            try {
                spilled = plan_for(cache_choices[c + 1], tokens);
            } catch (const Error& e) {
                if (e.kind() != ErrorKind::out_of_memory) throw;
                return choice;
            }
            const uint64_t kept = full_step_read_bytes(model, plan.memory);
            const uint64_t spilling = full_step_read_bytes(model, spilled.memory);
            if (spilling >= kept) return choice;
            choice.caches = cache_choices[c + 1];
            choice.spill_reason = fmt::format(
                "in memory they would leave {} expert buffers and {} a step that needs every expert {:.2f} GB; "
                "spilled, {} buffers and {:.2f} GB, the caches read back included",
                plan.memory.expert_pool.count, plan.dense_resident() ? "read" : "the dense parts streamed, reading",
                double(kept) / 1e9, spilled.memory.expert_pool.count, double(spilling) / 1e9);
            return choice;
        }
    }
    fail(ErrorKind::internal, "no batch memory plan was tried");
}

}  // namespace sluice
