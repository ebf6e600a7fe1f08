#include "engine/placement.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.hpp"

namespace sluice {

namespace {
int64_t total_experts(const ModelPlan& plan) {
    int64_t n = 0;
    for (const auto& l : plan.layers) n += int64_t(l.experts.size());
    return n;
}
uint64_t largest_expert(const ModelPlan& plan) {
    uint64_t b = 0;
    for (const auto& l : plan.layers)
        for (const auto& e : l.experts) b = std::max(b, e.bytes());
    return b;
}
double gib(uint64_t b) { return double(b) / double(uint64_t(1) << 30); }
}  // namespace

// Mirrors make_runtime (engine/runtime.cpp): keep the two in step.
HostPlan plan_host(const OpenModel& model, MemoryRequest req) {
    HostPlan h;
    if (req.resident == ResidentMode::automatic) {
        MemoryRequest all = req;
        all.ram_budget_bytes = 0;
        all.resident = ResidentMode::all;
        if (plan_memory(model.layout, model.plan, all).total_bytes <= req.ram_budget_bytes) req.resident = ResidentMode::all;
    }
    h.memory = plan_memory(model.layout, model.plan, req);
    h.mode = req.resident;
    if (h.mode != ResidentMode::all) {
        h.expert_buffers = std::max<int64_t>(h.memory.expert_pool.count, 1);
        h.mode = h.memory.resident_dense_bytes > 0 ? ResidentMode::dense : ResidentMode::none;
    }
    return h;
}

Placement cpu_placement(const OpenModel& model, const HostPlan& host) {
    Placement p;
    const bool all = host.mode == ResidentMode::all;
    p.dense.assign(model.plan.layers.size(), all || host.mode == ResidentMode::dense ? Tier::host : Tier::disk);
    p.head = Tier::host;
    p.dense_buffers = std::max(host.memory.dense_pool.count, 2);  // as make_runtime gives the streamer
    // The streamer's pool is staging and cache at once, and while a layer computes, the next layer's
    // predicted experts take about top_k of its buffers: they do not serve as cache. Measured on a
    // 3-layer V3-shaped model (64 experts, top 8): 57% of the needed experts found in a pool of 43,
    // 16% in a pool of 16; (pool - 8) / 64 gives 55% and 12.5%, the pool alone 67% and 25%.
    const int64_t pool_cache = std::max<int64_t>(host.expert_buffers - model.layout.router.top_k, 0);
    p.host_expert_entries = all ? total_experts(model.plan) : std::min(pool_cache, total_experts(model.plan));
    return p;
}

GpuPlacement gpu_placement(const OpenModel& model, const DeviceRequest& device, const MemoryRequest& host) {
    GpuPlacement g;
    g.device = plan_device_memory(model.layout, model.plan, device);
    Placement& p = g.placement;
    p.gpu = true;
    p.mla_on_device = g.device.mla_on_device;
    p.mla_bytes_per_position = uint64_t(model.layout.cache_width()) * uint64_t(std::max(device.mla_value_bytes, 1)) *
                               uint64_t(model.layout.n_layers);
    p.head = g.device.head_resident ? Tier::device : Tier::host;
    p.dense_buffers = std::max(g.device.dense_slots, 2);
    p.device_expert_entries = g.device.expert_cache_entries;

    // RAM: what streaming always holds there (staging, globals, activations, the latent cache)...
    MemoryRequest fixed = host;
    fixed.resident = ResidentMode::none;
    fixed.ram_budget_bytes = 0;
    const MemoryPlan minimum = plan_memory(model.layout, model.plan, fixed);
    g.host_fixed_bytes = minimum.minimum_bytes - (g.device.mla_on_device ? minimum.mla_cache_bytes : 0);
    if (host.ram_budget_bytes < g.host_fixed_bytes)
        fail(ErrorKind::out_of_memory, "RAM: the GPU plan needs at least {:.2f} GiB of host memory ({}); --ram is {:.2f} GiB",
             gib(g.host_fixed_bytes), minimum.describe(), gib(host.ram_budget_bytes));
    uint64_t room = host.ram_budget_bytes - g.host_fixed_bytes;
    // ...then the dense segments VRAM does not hold (read every step), then experts it does not cache.
    p.dense.assign(model.plan.layers.size(), Tier::device);
    for (size_t l = 0; l < model.plan.layers.size(); ++l) {
        if (g.device.dense_resident[l]) continue;
        const uint64_t b = model.plan.layers[l].dense.bytes();
        if (b <= room) {
            p.dense[l] = Tier::host;
            room -= b;
            g.host_dense_bytes += b;
        } else {
            p.dense[l] = Tier::disk;
        }
    }
    const uint64_t slot = largest_expert(model.plan);
    if (slot > 0) {
        p.host_expert_entries = std::min<int64_t>(int64_t(room / slot), total_experts(model.plan) - p.device_expert_entries);
        p.host_expert_entries = std::max<int64_t>(p.host_expert_entries, 0);
        g.host_expert_bytes = uint64_t(p.host_expert_entries) * slot;
    }
    return g;
}

std::string GpuPlacement::describe_host() const {
    return fmt::format("{:.2f} GiB fixed (globals, pinned staging, activations{}), {:.2f} GiB dense segments, {} experts "
                       "({:.2f} GiB)",
                       gib(host_fixed_bytes), device.mla_on_device ? "" : ", MLA cache", gib(host_dense_bytes),
                       placement.host_expert_entries, gib(host_expert_bytes));
}

}  // namespace sluice
