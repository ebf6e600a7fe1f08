// A batch job's memory choices, made on the planner alone before anything is allocated: where its
// latent caches live (all in memory; the first layers' in memory and the rest spilled to disk
// through a buffer; or all spilled) and how many tokens a step takes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/memory_planner.hpp"
#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"

namespace sluice {

struct LatentCachePlan {
    int resident_layers = 0;    // layers whose caches stay in memory (n_layers: all of them)
    uint64_t buffer_bytes = 0;  // memory the spilled layers' caches stream through
};

// --cache-ram: all of the caches in memory when they fit it; else the last layers' spill to disk
// and stream through a buffer of up to two layers' worth (a layer's caches read while the one
// before computes), and the first layers' stay in what is left.
LatentCachePlan plan_latent_cache(const ModelLayout& layout, int n_sequences, int64_t capacity, uint64_t cache_ram_bytes);

// Every layer's caches on disk, through a buffer of up to one layer's (at most kAutoSpillBufferBytes):
// where they go when --cache-ram does not say and they do not fit beside the model. Memory kept
// for a layer's caches saves at most its size in reads a step, and usually less (only the
// positions in use are read back); the same memory in the expert cache saves its whole size in
// every step that touches those experts, as a batch step touches nearly all of them.
inline constexpr uint64_t kAutoSpillBufferBytes = uint64_t(512) << 20;
LatentCachePlan spill_all_latent_caches(const ModelLayout& layout, int n_sequences, int64_t capacity);

// Bytes a step that needs every expert reads under `plan`: the experts its expert cache cannot
// hold, the dense parts when they stream, and every spilled latent cache in full (an upper bound:
// only the positions in use are read back, so a close call keeps the caches in memory).
uint64_t full_step_read_bytes(const ModelPlan& model, const MemoryPlan& plan);

// The caps on a batch step's tokens to try, largest first: max_step_tokens when given (> 0), else
// max(kBatchStepTokens, least), then kBatchStepTokensFallback, then least (least_step_tokens,
// engine/batch_scheduler.hpp), each only when above least and smaller than the one before. Past the roofline-balanced size a
// token costs its GEMMs alone, and a step's reads are hidden only when its compute outlasts them,
// which takes more tokens the faster the CPU is against the disk. On the 5-layer V3 model under
// 8 GiB, a 490-token prefill step computed 9 s of its 11.5 s of reads on a Zen 4, and 1,000-token
// steps ~11.3 s against ~12 s on a Xeon (1.5 s a step waiting): the job's first 16k prompt
// tokens ran at 82 tokens/s there in 1,000-token steps, 93 in 1,500-token steps (compute 16.2 s
// against 13.5 s of reads, 0.2 s waiting) and 89 in 2,000-token ones. The larger step's
// activations (1.11 GiB against 0.78 at 512 sequences) cost the expert pool 15 of its 154 buffers.
inline constexpr int64_t kBatchStepTokens = 1536;
inline constexpr int64_t kBatchStepTokensFallback = 1024;
std::vector<int64_t> batch_step_choices(int64_t max_step_tokens, int max_sequences, int64_t prefill_chunk);

struct BatchMemoryChoice {
    LatentCachePlan caches;
    int64_t step_tokens = 0;
    std::string spill_reason;  // set when the caches would fit in memory but spill because that reads less
};

// The first (step, caches) that fits: step sizes in the order given (largest first), and for each,
// the cache plans in the order given (in memory first), so a larger step spilled beats a smaller
// one in memory (a smaller step is more passes over the weights). At one step size, a plan that
// keeps every cache in memory gives way to the next (spilled) plan when that reads less in a step
// that needs every expert. plan_for throws ErrorKind::out_of_memory for a plan that does not fit;
// when none fits, the last one's error (the smallest budget it needs) is thrown.
BatchMemoryChoice choose_batch_memory(const ModelPlan& model, int n_layers, const std::vector<int64_t>& step_choices,
                                      const std::vector<LatentCachePlan>& cache_choices,
                                      const std::function<RunMemoryPlan(const LatentCachePlan&, int64_t)>& plan_for);

}  // namespace sluice
