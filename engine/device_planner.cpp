#include "engine/device_planner.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/device_weights.hpp"

namespace sluice {

namespace {

uint64_t aligned(uint64_t bytes, uint64_t alignment) {
    const uint64_t a = std::max<uint64_t>(alignment, 1);
    return (bytes + a - 1) / a * a;
}

double gib(uint64_t bytes) { return double(bytes) / double(uint64_t(1) << 30); }

uint64_t role_bytes(const Segment& s, WeightRole role) {
    uint64_t b = 0;
    for (const auto& t : s.tensors)
        if (t.role == role) b += t.extent.length + t.scales.length;
    return b;
}

}  // namespace

DeviceRequest device_request(const ModelLayout& layout, std::span<const RunShape> passes, uint64_t vram_budget_bytes,
                             int expert_slots, const CudaBackendOptions& backend) {
    if (passes.empty()) fail(ErrorKind::internal, "device_request: no forward pass to plan for");
    // Every pass the command makes, one after another (bench: each prompt length and batch size).
    // The host plan keeps the one largest on the host, which need not be the largest on the device:
    // a long context of few tokens a step against a short one of many (the second pass's forward
    // was refused at a --vram the plan had accepted).
    std::vector<ForwardShape> shapes;
    for (const auto& p : passes) shapes.push_back(DeepseekForward::shape_of(ForwardOptions{p}));
    DeviceRequest r;
    r.vram_budget_bytes = vram_budget_bytes;
    // The latent cache of the pass with the most positions over its sequences.
    const auto widest_cache = std::max_element(shapes.begin(), shapes.end(), [](const auto& a, const auto& b) {
        return int64_t(a.max_context) * a.n_sequences < int64_t(b.max_context) * b.n_sequences;
    });
    r.context = widest_cache->max_context;
    r.n_sequences = widest_cache->n_sequences;
    for (const auto& s : shapes) r.batch_tokens = std::max(r.batch_tokens, s.max_batch_tokens);
    r.activation_bytes = cuda_forward_device_bytes(layout, shapes, backend, false);
    r.expert_slots = expert_slots;
    return r;
}

int DevicePlan::n_dense_resident() const { return int(std::count(dense_resident.begin(), dense_resident.end(), 1)); }

DevicePlan plan_device_memory(const ModelLayout& d, const ModelPlan& model, const DeviceRequest& req) {
    if (req.vram_budget_bytes == 0) fail(ErrorKind::invalid_input, "the device plan needs a --vram budget above 0");
    const uint64_t align = std::max<uint64_t>(req.alignment_bytes, 1);
    DevicePlan p;
    p.budget_bytes = req.vram_budget_bytes;
    p.activation_bytes = aligned(req.activation_bytes, align);
    // What DeviceWeights allocates, counted by DeviceWeights itself. The norms, routers and the
    // head always live on the device (the head in one piece: a step's logits need all of it); the
    // embedding never does (the host dequantises the step's rows).
    p.vectors_bytes = DeviceWeights::resident_region_bytes(d, model);
    int64_t n_experts_total = 0;
    uint64_t largest_expert = 0;
    for (const auto& l : model.layers) {
        n_experts_total += int64_t(l.experts.size());
        for (const auto& e : l.experts) largest_expert = std::max(largest_expert, DeviceWeights::slot_bytes(e));
    }
    p.head_bytes = aligned(role_bytes(model.globals, WeightRole::lm_head), align);
    p.head_resident = true;
    p.embedding_bytes = aligned(role_bytes(model.globals, WeightRole::embed), align);
    p.mla_cache_bytes = aligned(uint64_t(std::max<int64_t>(req.context, 0)) * uint64_t(std::max(req.n_sequences, 1)) *
                                    uint64_t(d.cache_width()) * uint64_t(std::max(req.mla_value_bytes, 1)) *
                                    uint64_t(d.n_layers),
                                align);

    // Staging: at least two dense slots (one computing, one landing) and 2 x top_k expert slots (a
    // layer's experts computing while the next layer's land), each as large as the largest segment.
    const int n_layers = int(model.layers.size());
    std::vector<uint64_t> dense_bytes(static_cast<size_t>(n_layers));
    std::vector<uint64_t> slot_bytes(static_cast<size_t>(n_layers));  // the same segment streamed
    for (int l = 0; l < n_layers; ++l) {
        const Segment& dense = model.layers[size_t(l)].dense;
        dense_bytes[size_t(l)] = dense.tensors.empty() ? 0 : DeviceWeights::resident_segment_bytes(dense);
        slot_bytes[size_t(l)] = dense.tensors.empty() ? 0 : DeviceWeights::slot_bytes(dense);
    }
    const uint64_t largest_dense = n_layers ? *std::max_element(slot_bytes.begin(), slot_bytes.end()) : 0;
    const int dense_slots = std::max(req.dense_slots, 2);
    p.dense_slots = largest_dense > 0 ? dense_slots : 0;
    p.dense_slot_bytes = largest_dense;
    const int min_expert_slots = 2 * std::max(d.router.top_k, 1);
    p.expert_slots = largest_expert > 0 ? std::max(req.expert_slots, min_expert_slots) : 0;
    p.expert_slot_bytes = aligned(largest_expert, align);
    auto staging = [&] { return uint64_t(p.dense_slots) * p.dense_slot_bytes + uint64_t(p.expert_slots) * p.expert_slot_bytes; };

    p.minimum_bytes = p.vectors_bytes + p.activation_bytes + staging();
    if (p.minimum_bytes > req.vram_budget_bytes)
        fail(ErrorKind::out_of_memory,
             "the device needs at least {:.2f} GiB ({:.2f} GiB norms, routers and the head, {:.2f} GiB activations, {} dense slots "
             "x {:.1f} MiB, {} expert slots x {:.1f} MiB; the MLA cache in pinned host memory); --vram is {:.2f} GiB: "
             "raise --vram to at least {:.2f} GiB ({} bytes) or lower --batch",
             gib(p.minimum_bytes), gib(p.vectors_bytes), gib(p.activation_bytes), p.dense_slots,
             double(p.dense_slot_bytes) / (1 << 20), p.expert_slots, double(p.expert_slot_bytes) / (1 << 20),
             gib(req.vram_budget_bytes), gib(p.minimum_bytes), p.minimum_bytes);
    uint64_t room = req.vram_budget_bytes - p.minimum_bytes;
    p.residents.push_back({"vectors", p.vectors_bytes, double(p.vectors_bytes)});

    // Everything from here is placed by bytes moved per step per byte of VRAM. The latent cache,
    // the dense segments and the head are each read whole every step (ratio 1); the cache goes
    // first, as the design has it (attention over a host-resident cache would copy it every step).
    if (p.mla_cache_bytes <= room) {
        p.mla_on_device = true;
        room -= p.mla_cache_bytes;
        p.residents.push_back({"mla cache", p.mla_cache_bytes, double(p.mla_cache_bytes)});
    }
    // Dense segments, largest first: each one made resident can also shrink the dense slots to
    // the largest segment still streamed, and all of them resident frees the slots altogether.
    p.dense_resident.assign(size_t(n_layers), 0);
    std::vector<int> order(static_cast<size_t>(n_layers));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return dense_bytes[size_t(a)] > dense_bytes[size_t(b)]; });
    for (size_t i = 0; i < order.size(); ++i) {
        const int l = order[size_t(i)];
        if (dense_bytes[size_t(l)] == 0) continue;
        uint64_t next_slot = 0;  // the largest dense segment still streamed if l becomes resident
        for (size_t j = 0; j < order.size(); ++j)
            if (j != i && !p.dense_resident[size_t(order[j])]) next_slot = std::max(next_slot, slot_bytes[size_t(order[j])]);
        const int slots_after = next_slot > 0 ? dense_slots : 0;
        const uint64_t freed = staging() - (uint64_t(slots_after) * next_slot + uint64_t(p.expert_slots) * p.expert_slot_bytes);
        if (dense_bytes[size_t(l)] > room + freed) continue;
        room = room + freed - dense_bytes[size_t(l)];
        p.dense_resident[size_t(l)] = 1;
        p.resident_dense_bytes += dense_bytes[size_t(l)];
        p.dense_slots = slots_after;
        p.dense_slot_bytes = next_slot;
        p.residents.push_back({fmt::format("dense {}", l), dense_bytes[size_t(l)], double(dense_bytes[size_t(l)])});
    }

    // Experts: an entry saves a read in a step of t tokens with probability 1 - (1 - k/E)^t under
    // uniform routing (each token picks k of E), below 1 for every step a batch can fill.
    if (p.expert_slot_bytes > 0) {
        const int64_t cacheable = std::max<int64_t>(n_experts_total - p.expert_slots, 0);
        p.expert_cache_entries = std::min<int64_t>(int64_t(room / p.expert_slot_bytes), cacheable);
        p.expert_cache_bytes = uint64_t(p.expert_cache_entries) * p.expert_slot_bytes;
        room -= p.expert_cache_bytes;
        if (p.expert_cache_entries > 0) {
            const double k_over_e = double(d.router.top_k) / double(std::max<int64_t>(d.n_experts, 1));
            const double needed = 1.0 - std::pow(1.0 - k_over_e, double(std::max<int64_t>(req.batch_tokens, 1)));
            p.residents.push_back({"expert cache", p.expert_cache_bytes, needed * double(p.expert_cache_bytes)});
        }
    }
    p.staging_bytes = staging();
    p.total_bytes = p.vectors_bytes + p.activation_bytes + p.staging_bytes + (p.mla_on_device ? p.mla_cache_bytes : 0) +
                    p.resident_dense_bytes + p.expert_cache_bytes;
    if (p.total_bytes > req.vram_budget_bytes)
        fail(ErrorKind::internal, "device plan of {} bytes exceeds the budget of {}", p.total_bytes, req.vram_budget_bytes);
    return p;
}

std::string DevicePlan::describe() const {
    return fmt::format(
        "{:.2f} of {:.2f} GiB: norms and routers {:.2f} GiB, activations {:.2f} GiB, MLA cache {:.2f} GiB {}, {} of {} "
        "dense segments resident ({:.2f} GiB), head {}, staging {} dense x {:.1f} MiB + {} expert x {:.1f} MiB, "
        "expert cache {} entries ({:.2f} GiB), embedding {}",
        gib(total_bytes), gib(budget_bytes), gib(vectors_bytes), gib(activation_bytes), gib(mla_cache_bytes),
        mla_on_device ? "on the device" : "in pinned host memory (does not fit)", n_dense_resident(),
        dense_resident.size(), gib(resident_dense_bytes), head_resident ? "resident" : "copied per step", dense_slots,
        double(dense_slot_bytes) / (1 << 20), expert_slots, double(expert_slot_bytes) / (1 << 20), expert_cache_entries,
        gib(expert_cache_bytes), embedding_resident ? "resident" : "on the host");
}

}  // namespace sluice
