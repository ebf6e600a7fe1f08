// Where a model's bytes live while it runs, as the runtime plans it: the input of the performance
// model (engine/perf_model.hpp). Both sides come from the planning code make_runtime runs, not a
// copy of it: the host plan from plan_run_memory (everything resident when it fits, else the dense
// parts, then the streamer's expert pool), and for a GPU run the device plan for the device_request
// make_runtime makes for the host plan's largest forward pass.
#pragma once

#include <cstdint>
#include <span>

#include "engine/device_planner.hpp"
#include "engine/memory_planner.hpp"
#include "engine/model_loader.hpp"
#include "engine/perf_model.hpp"

namespace sluice {

// CPU runs.
Placement cpu_placement(const OpenModel& model, const RunMemoryPlan& host);

struct GpuPlacement {
    Placement placement;
    DevicePlan device;
};

// GPU runs: `host` is the run's host plan, whose streamer (or resident weights) feeds the device;
// `passes` the forward passes the command makes (the device is planned for all of them, as
// make_runtime does); `expert_slots` is --expert-buffers as make_runtime passes it (0: 2 x top_k).
GpuPlacement gpu_placement(const OpenModel& model, const RunMemoryPlan& host, std::span<const RunShape> passes,
                           uint64_t vram_budget_bytes, int expert_slots = 0);

}  // namespace sluice
