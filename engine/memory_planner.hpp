// The memory planner: before the first read, the bytes of everything sluice will hold — what the
// process holds already, resident weights, staging and cache buffers, the latent cache and
// activations of the forward passes it will run — against the --ram budget. Each figure is what
// the allocation it stands for takes from the OS (page and huge-page rounding included), computed
// by the same functions the allocating code uses, so a plan that fits is a process that fits.
// Refuses with the smallest budget that would work when it does not fit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/deepseek_v3.hpp"
#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"

namespace sluice {

enum class ResidentMode { none, dense, automatic, all };
ResidentMode parse_resident_mode(const std::string& text);
const char* resident_mode_name(ResidentMode mode);

// Buffers for streamed segments, end to end in one huge-page mapping: a buffer's size is only
// rounded to the reader's block, and the pool as a whole to 2 MiB (each buffer rounded up to its
// own 2 MiB pages made 23.6 MiB experts take 24 MiB, 2.06 MiB ones 4 MiB).
struct StagingPool {
    uint64_t slot_bytes = 0;  // one buffer: the largest read it must take, to the reader's block
    int count = 0;
    uint64_t bytes() const;   // what the pool holds from the OS
};
// A pool of `count` buffers for reads of up to `largest_read_bytes`, for a reader whose buffers
// must be `io_alignment`-aligned.
StagingPool staging_pool(uint64_t largest_read_bytes, int count, size_t io_alignment);
// The bytes the reader reads for a segment into a buffer (its extents rounded out to 4 KiB).
uint64_t segment_read_bytes(const Segment& segment);

// Dense buffers the streamer holds to read `prefetch_layers` ahead: the layer computing and the
// ones being read, never more than there are layers.
int dense_buffer_count(int prefetch_layers, int n_layers);

struct MemoryRequest {
    uint64_t ram_budget_bytes = 0;   // 0: no budget (plan only)
    // The forward passes that will run, one at a time: the plan holds the largest.
    std::vector<RunShape> shapes{RunShape{}};
    // A pass of another kind that runs alone like them (bench's GEMM-rate measurement): its bytes.
    uint64_t other_pass_bytes = 0;
    // Latent caches beyond RAM (engine/spilled_latent_cache): the first cache_resident_layers
    // layers keep theirs in memory (-1: all), the others live on disk and stream through a buffer
    // of cache_spill_buffer_bytes.
    int cache_resident_layers = -1;
    uint64_t cache_spill_buffer_bytes = 0;
    int n_threads = 1;
    int prefetch_layers = 1;         // dense segments read ahead (dense_buffer_count buffers)
    int expert_slots = 0;            // expert buffers for reads in flight; 0 = 2 x top_k
    ResidentMode resident = ResidentMode::automatic;
    // What the process holds before any of this (binary, libraries, tokenizer, model metadata):
    // part of the budget like the rest.
    uint64_t held_bytes = 0;
};

struct MemoryPlan {
    uint64_t held_bytes = 0;            // the process before the plan
    uint64_t global_bytes = 0;          // embedding, head, every norm, router and router bias (always resident)
    uint64_t resident_dense_bytes = 0;  // every layer's dense segment, when resident
    uint64_t resident_expert_bytes = 0; // every expert, when all is resident
    StagingPool dense_pool;             // count 0: dense parts resident
    StagingPool expert_pool;            // staging for reads in flight + the expert cache
    int expert_slots = 0;               // of expert_pool.count, the buffers for reads in flight
    RunShape shape;                     // the largest of the requested forward passes
    uint64_t mla_cache_bytes = 0;       // its latent cache in memory (the resident layers' + the spill buffer)
    uint64_t mla_spilled_bytes = 0;     // its latent cache on disk
    uint64_t activation_bytes = 0;      // its step buffers
    uint64_t logits_bytes = 0;          // the logits its caller holds
    uint64_t kernel_scratch_bytes = 0;  // the matmul kernels' per-thread scratch (largest of the passes)
    uint64_t other_pass_bytes = 0;      // when larger than the largest forward pass, which it replaces
    uint64_t total_bytes = 0;           // everything above
    uint64_t minimum_bytes = 0;         // --resident none with the same passes
    bool fits = true;

    uint64_t staging_bytes() const { return dense_pool.bytes() + expert_pool.bytes(); }
    int expert_cache_entries() const { return expert_pool.count - expert_slots; }
    std::string describe() const;
    nlohmann::json to_json() const;  // the figures above in bytes, and the pools' buffer counts
};

// Computes the plan; throws ErrorKind::out_of_memory naming the smallest budget when a budget
// is given and even --resident none does not fit.
MemoryPlan plan_memory(const ModelLayout& layout, const ModelPlan& model, const MemoryRequest& request);

// A run's plan as make_runtime makes it and `sluice plan` predicts it (one function, so the two
// cannot drift apart): --resident auto holds everything when it all fits the budget, else streams
// within it; the streamer then keeps the dense parts resident when the plan found room for them,
// and its expert buffers (staging and cache in one pool) are the plan's expert pool.
struct RunMemoryPlan {
    ResidentMode mode = ResidentMode::all;  // all, or the request's mode (none, dense or auto) when streaming
    MemoryPlan memory;
    bool streams() const { return mode != ResidentMode::all; }
    bool dense_resident() const { return memory.resident_dense_bytes > 0; }
    int expert_buffers() const { return std::max(memory.expert_pool.count, 1); }
    int dense_buffers() const { return memory.dense_pool.count; }  // 0 when the dense parts are resident
};
RunMemoryPlan plan_run_memory(const ModelLayout& layout, const ModelPlan& model, const MemoryRequest& request);

}  // namespace sluice
