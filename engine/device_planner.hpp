// The device memory planner: before anything is copied to a GPU, what the --vram budget holds.
// VRAM is cache level 1 (RAM level 2, disk level 3): the planner keeps resident on the device
// what saves the most bytes moved per step per byte of VRAM — norms and routers always, then the
// MLA latent cache, the dense segments (attention + shared expert of MoE layers, the dense
// layers' MLP), the output head, a device expert cache, and the embedding last — after the
// staging slots segments are copied through. A pure function of the model's shapes and the
// request; the CUDA backend supplies its activation bytes. `sluice plan` prints it and `sluice
// run --device cuda` allocates from it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/cuda/cuda_backend.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"

namespace sluice {

struct DeviceRequest {
    uint64_t vram_budget_bytes = 0;   // the whole device allowance (--vram); must be > 0
    int64_t context = 4096;           // latent-cache positions per sequence
    int n_sequences = 1;              // sequences whose latent caches live together
    int64_t batch_tokens = 1;         // tokens per step: how often a cached expert saves a read
    uint64_t activation_bytes = 0;    // the backend's activations and workspace for that step
    int mla_value_bytes = 4;          // bytes per latent-cache value on the device (f32 like the CPU path)
    int dense_slots = 2;              // device slots for streamed dense segments (>= 2: one computing, one landing)
    int expert_slots = 0;             // device slots for streamed experts; 0 or less than 2 x top_k: 2 x top_k
    uint64_t alignment_bytes = 256;   // every device buffer is rounded up to this (cudaMalloc's alignment)
};

// One thing the plan keeps on the device besides the slots, in the order it was placed.
struct DeviceResident {
    std::string what;                 // "vectors", "mla cache", "dense 3", "head", "expert cache", "embedding"
    uint64_t bytes = 0;
    double saved_per_step = 0;        // bytes a step no longer copies because this is resident
};

struct DevicePlan {
    uint64_t budget_bytes = 0;
    uint64_t vectors_bytes = 0;       // every layer's norms, router and router bias, the final norm (always)
    uint64_t activation_bytes = 0;
    uint64_t mla_cache_bytes = 0;     // on the device when mla_on_device, else in pinned host memory
    bool mla_on_device = false;
    int dense_slots = 0;              // 0 when every dense segment is resident
    uint64_t dense_slot_bytes = 0;    // the largest dense segment still streamed, aligned
    int expert_slots = 0;
    uint64_t expert_slot_bytes = 0;   // the largest expert segment, aligned
    std::vector<uint8_t> dense_resident;  // per layer
    uint64_t resident_dense_bytes = 0;
    bool head_resident = false;
    bool embedding_resident = false;
    uint64_t head_bytes = 0;
    uint64_t embedding_bytes = 0;
    int64_t expert_cache_entries = 0; // device expert cache, besides the expert slots
    uint64_t expert_cache_bytes = 0;
    uint64_t staging_bytes = 0;       // dense_slots x dense_slot_bytes + expert_slots x expert_slot_bytes
    uint64_t total_bytes = 0;         // everything on the device; <= budget_bytes
    uint64_t minimum_bytes = 0;       // the smallest --vram for this context and batch (MLA in host memory)
    std::vector<DeviceResident> residents;

    int n_dense_resident() const;
    std::string describe() const;
};

// What a --device cuda run asks the planner for under `vram_budget_bytes`, for every forward pass
// the command makes (`passes`, one after another): the latent cache of the pass with the most
// positions over its sequences, the widest step, the CUDA backend's activation bytes for the
// largest pass plus the largest GEMM scratch (cuda_forward_device_bytes), `expert_slots` as
// --expert-buffers gives it. make_runtime and `sluice plan --gpu` both ask this.
DeviceRequest device_request(const ModelLayout& layout, std::span<const RunShape> passes, uint64_t vram_budget_bytes,
                             int expert_slots, const CudaBackendOptions& backend = {});

// Throws ErrorKind::out_of_memory naming the smallest --vram that works when even the minimum
// (vectors, activations, 2 dense + 2 x top_k expert slots) does not fit, and invalid_input for a
// zero budget.
DevicePlan plan_device_memory(const ModelLayout& layout, const ModelPlan& model, const DeviceRequest& request);

}  // namespace sluice
