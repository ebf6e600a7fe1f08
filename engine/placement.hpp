// Where a model's bytes live under given budgets, as the memory planners decide it: the input of
// the performance model (engine/perf_model.hpp). CPU runs: exactly what make_runtime plans for
// --ram (everything resident when it fits, else the dense parts, then expert buffers). GPU runs:
// the device planner for --vram, then RAM for what VRAM does not hold (dense segments first, then
// experts the device does not cache), the rest on disk.
#pragma once

#include <cstdint>
#include <string>

#include "engine/device_planner.hpp"
#include "engine/memory_planner.hpp"
#include "engine/model_loader.hpp"
#include "engine/perf_model.hpp"

namespace sluice {

struct HostPlan {
    ResidentMode mode = ResidentMode::automatic;  // resolved: all, none or dense
    MemoryPlan memory;
    int64_t expert_buffers = 0;                   // the streamer's pool (staging + cache)
};

// make_runtime's decision for this request (request.resident automatic: all when it fits).
HostPlan plan_host(const OpenModel& model, MemoryRequest request);
Placement cpu_placement(const OpenModel& model, const HostPlan& host);

struct GpuPlacement {
    Placement placement;
    DevicePlan device;
    uint64_t host_fixed_bytes = 0;     // RAM for globals, pinned staging, activations (and the MLA cache if not in VRAM)
    uint64_t host_dense_bytes = 0;     // dense segments kept in RAM
    uint64_t host_expert_bytes = 0;    // RAM expert cache
    std::string describe_host() const;
};

// `host` is what plan_memory is asked for the RAM side (its budget; resident none gives the
// fixed part); `device` what the device planner is asked.
GpuPlacement gpu_placement(const OpenModel& model, const DeviceRequest& device, const MemoryRequest& host);

}  // namespace sluice
