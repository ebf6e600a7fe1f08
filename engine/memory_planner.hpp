// The memory planner: before the first read, the bytes of everything sluice will hold — staging
// slots, resident weights and caches, the MLA cache for the requested context, activations —
// against the --ram budget. Refuses with the smallest budget that would work when it does not fit.
#pragma once

#include <cstdint>
#include <string>

#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"

namespace sluice {

enum class ResidentMode { none, dense, automatic, all };
ResidentMode parse_resident_mode(const std::string& text);
const char* resident_mode_name(ResidentMode mode);

struct MemoryRequest {
    uint64_t ram_budget_bytes = 0;   // 0: no budget (plan only)
    int64_t context = 4096;          // positions of the MLA cache
    int64_t batch_tokens = 128;      // tokens per forward chunk
    int n_sequences = 1;             // sequences with a latent cache of `context` positions each
    int cache_resident_layers = -1;  // layers whose latent caches stay in memory; -1: all (the
                                     // others live on disk: engine/spilled_latent_cache)
    uint64_t cache_spill_buffer_bytes = 0;  // the buffer the spilled layers' caches stream through
    uint64_t other_bytes = 0;        // held by the caller (a batch job's logits rows)
    int n_threads = 1;
    int dense_slots = 2;             // staging slots for dense segments (>= 2: double buffering)
    int expert_slots = 0;            // staging slots for experts; 0 = 2 x top_k
    ResidentMode resident = ResidentMode::automatic;
};

struct MemoryPlan {
    uint64_t dense_slot_bytes = 0;   // one slot: the largest dense segment
    uint64_t expert_slot_bytes = 0;  // one slot: the largest expert segment
    int dense_slots = 0;
    int expert_slots = 0;
    uint64_t staging_bytes = 0;
    uint64_t global_bytes = 0;       // embedding, head, every norm, router and router bias (always resident)
    uint64_t resident_dense_bytes = 0;
    uint64_t expert_cache_bytes = 0; // what is left for the expert cache (auto)
    uint64_t mla_cache_bytes = 0;    // in memory: the resident layers' caches + the spill buffer
    uint64_t mla_spilled_bytes = 0;  // on disk
    uint64_t other_bytes = 0;
    uint64_t activation_bytes = 0;
    uint64_t total_bytes = 0;        // everything above
    uint64_t minimum_bytes = 0;      // --resident none with the same context and batch
    bool fits = true;

    std::string describe() const;
};

// Activation and cache bytes of DeepseekForward for these sizes (must match its allocations).
uint64_t forward_activation_bytes(const ModelLayout& layout, int64_t batch_tokens, int64_t context, int n_threads);
uint64_t mla_cache_bytes(const ModelLayout& layout, int64_t context);

// Computes the plan; throws ErrorKind::out_of_memory naming the smallest budget when a budget
// is given and even --resident none does not fit.
MemoryPlan plan_memory(const ModelLayout& layout, const ModelPlan& model, const MemoryRequest& request);

}  // namespace sluice
