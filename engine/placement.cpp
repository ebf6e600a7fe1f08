#include "engine/placement.hpp"

#include <algorithm>

namespace sluice {

namespace {
int64_t total_experts(const ModelPlan& plan) {
    int64_t n = 0;
    for (const auto& l : plan.layers) n += int64_t(l.experts.size());
    return n;
}

// The host side of either run: dense parts resident or streamed through the streamer's ring, and
// the experts it holds (all of them, or its pool of buffers that are staging and cache at once).
void place_host(const OpenModel& model, const RunMemoryPlan& host, Placement& p) {
    const bool all = !host.streams();
    p.dense.assign(model.plan.layers.size(), all || host.dense_resident() ? Tier::host : Tier::disk);
    p.dense_buffers = host.dense_buffers();
    p.host_expert_entries = std::min<int64_t>(all ? total_experts(model.plan) : host.expert_buffers(), total_experts(model.plan));
    p.host_pool = !all;
}
}  // namespace

Placement cpu_placement(const OpenModel& model, const RunMemoryPlan& host) {
    Placement p;
    place_host(model, host, p);
    p.head = Tier::host;
    return p;
}

GpuPlacement gpu_placement(const OpenModel& model, const RunMemoryPlan& host, std::span<const RunShape> passes,
                           uint64_t vram_budget_bytes, int expert_slots) {
    GpuPlacement g;
    const auto& d = model.layout;
    g.device = plan_device_memory(d, model.plan, device_request(d, passes, vram_budget_bytes, expert_slots));
    Placement& p = g.placement;
    place_host(model, host, p);
    p.gpu = true;
    p.mla_on_device = g.device.mla_on_device;
    p.mla_bytes_per_position = uint64_t(d.cache_width()) * 4 * uint64_t(d.n_layers);  // f32, as device_request asks
    p.head = Tier::device;  // DeviceWeights keeps the head on the device, always
    for (size_t l = 0; l < p.dense.size(); ++l)
        if (g.device.dense_resident[l]) p.dense[l] = Tier::device;
    // make_runtime gives DeviceWeights max(dense_slots, 2) dense slots, and the planner's expert slots
    // and cache entries as one pool of expert slots, each keeping its expert after use.
    p.device_dense_slots = std::max(g.device.dense_slots, 2);
    p.device_expert_entries = std::min<int64_t>(g.device.expert_slots + g.device.expert_cache_entries, total_experts(model.plan));
    p.device_pool = true;
    return g;
}

}  // namespace sluice
