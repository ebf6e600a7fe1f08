#include "engine/memory_planner.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/deepseek_v3.hpp"

namespace sluice {

ResidentMode parse_resident_mode(const std::string& text) {
    if (text == "none") return ResidentMode::none;
    if (text == "dense") return ResidentMode::dense;
    if (text == "auto") return ResidentMode::automatic;
    if (text == "all") return ResidentMode::all;
    fail(ErrorKind::invalid_input, "--resident must be none, dense, auto or all, not '{}'", text);
}

const char* resident_mode_name(ResidentMode mode) {
    switch (mode) {
        case ResidentMode::none: return "none";
        case ResidentMode::dense: return "dense";
        case ResidentMode::automatic: return "auto";
        case ResidentMode::all: return "all";
    }
    return "?";
}

uint64_t mla_cache_bytes(const ModelLayout& d, int64_t context) {
    return uint64_t(context) * uint64_t(d.cache_width()) * 4 * uint64_t(d.n_layers);
}

uint64_t forward_activation_bytes(const ModelLayout& d, int64_t n, int64_t context, int n_threads) {
    ForwardShape shape{n, context, 1, DeepseekForward::kDecompressBlockPositions};
    return uint64_t(DeepseekForward::activation_floats(d, shape) + CpuBackend::scratch_floats(d, shape, n_threads)) * 4;
}

MemoryPlan plan_memory(const ModelLayout& d, const ModelPlan& model, const MemoryRequest& req) {
    MemoryPlan p;
    uint64_t all_dense = 0, all_experts = 0;
    for (const auto& l : model.layers) {
        p.dense_slot_bytes = std::max(p.dense_slot_bytes, l.dense.bytes());
        all_dense += l.dense.bytes();
        p.global_bytes += l.vectors.bytes();
        for (const auto& e : l.experts) {
            p.expert_slot_bytes = std::max(p.expert_slot_bytes, e.bytes());
            all_experts += e.bytes();
        }
    }
    p.global_bytes += model.globals.bytes() + model.global_vectors.bytes();
    p.dense_slots = std::max(req.dense_slots, 2);
    p.expert_slots = req.expert_slots > 0 ? req.expert_slots : 2 * std::max(d.router.top_k, 1);
    if (p.expert_slot_bytes == 0) p.expert_slots = 0;
    const uint64_t all_caches = mla_cache_bytes(d, req.context) * uint64_t(std::max(req.n_sequences, 1));
    const int resident_layers = req.cache_resident_layers < 0 ? d.n_layers : std::min(req.cache_resident_layers, d.n_layers);
    p.mla_spilled_bytes = d.n_layers > 0 ? all_caches / uint64_t(d.n_layers) * uint64_t(d.n_layers - resident_layers) : 0;
    p.mla_cache_bytes = all_caches - p.mla_spilled_bytes + (p.mla_spilled_bytes > 0 ? req.cache_spill_buffer_bytes : 0);
    p.activation_bytes = forward_activation_bytes(d, req.batch_tokens, req.context, req.n_threads);
    p.other_bytes = req.other_bytes;

    const uint64_t fixed = p.global_bytes + p.mla_cache_bytes + p.activation_bytes + p.other_bytes;
    const uint64_t staging = uint64_t(p.dense_slots) * p.dense_slot_bytes + uint64_t(p.expert_slots) * p.expert_slot_bytes;
    p.minimum_bytes = fixed + staging;

    switch (req.resident) {
        case ResidentMode::all:
            // Everything in memory: no staging at all.
            p.resident_dense_bytes = all_dense;
            p.expert_cache_bytes = all_experts;
            p.dense_slots = p.expert_slots = 0;
            break;
        case ResidentMode::none: p.staging_bytes = staging; break;
        case ResidentMode::dense:
            p.staging_bytes = uint64_t(p.expert_slots) * p.expert_slot_bytes;
            p.dense_slots = 0;
            p.resident_dense_bytes = all_dense;
            break;
        case ResidentMode::automatic: {
            p.staging_bytes = staging;
            // Dense parts first (read every step), then experts, while the budget allows.
            if (req.ram_budget_bytes > p.minimum_bytes) {
                uint64_t room = req.ram_budget_bytes - p.minimum_bytes;
                if (room >= all_dense) {
                    p.resident_dense_bytes = all_dense;
                    room -= all_dense;
                    p.staging_bytes -= uint64_t(p.dense_slots) * p.dense_slot_bytes;
                    room += uint64_t(p.dense_slots) * p.dense_slot_bytes;
                    p.dense_slots = 0;
                }
                p.expert_cache_bytes = std::min(room, all_experts);
            }
            break;
        }
    }
    if (req.resident == ResidentMode::dense) p.staging_bytes = uint64_t(p.expert_slots) * p.expert_slot_bytes;
    p.total_bytes = fixed + p.staging_bytes + p.resident_dense_bytes + p.expert_cache_bytes;
    p.fits = req.ram_budget_bytes == 0 || p.total_bytes <= req.ram_budget_bytes;
    if (!p.fits) {
        if (p.minimum_bytes > req.ram_budget_bytes)
            fail(ErrorKind::out_of_memory,
                 "the model needs at least {:.2f} GiB with --resident none, context {} and batch {} ({}); the budget is "
                 "{:.2f} GiB: raise --ram to at least {:.2f} GiB or lower --context / --batch",
                 double(p.minimum_bytes) / (1 << 30), req.context, req.batch_tokens, p.describe(),
                 double(req.ram_budget_bytes) / (1 << 30), double(p.minimum_bytes) / (1 << 30));
        fail(ErrorKind::out_of_memory,
             "--resident {} needs {:.2f} GiB ({}), over the budget of {:.2f} GiB; --resident none needs {:.2f} GiB",
             resident_mode_name(req.resident), double(p.total_bytes) / (1 << 30), p.describe(),
             double(req.ram_budget_bytes) / (1 << 30), double(p.minimum_bytes) / (1 << 30));
    }
    return p;
}

std::string MemoryPlan::describe() const {
    auto gib = [](uint64_t b) { return double(b) / (1 << 30); };
    return fmt::format(
        "staging {:.2f} GiB ({} dense slots x {:.1f} MiB + {} expert slots x {:.1f} MiB), globals {:.2f} GiB, resident "
        "dense {:.2f} GiB, expert cache {:.2f} GiB, MLA cache {:.2f} GiB{}, activations {:.2f} GiB{}",
        gib(staging_bytes), dense_slots, double(dense_slot_bytes) / (1 << 20), expert_slots,
        double(expert_slot_bytes) / (1 << 20), gib(global_bytes), gib(resident_dense_bytes), gib(expert_cache_bytes),
        gib(mla_cache_bytes),
        mla_spilled_bytes ? fmt::format(" (+ {:.2f} GiB spilled to disk)", gib(mla_spilled_bytes)) : std::string(),
        gib(activation_bytes), other_bytes ? fmt::format(", other {:.2f} GiB", gib(other_bytes)) : std::string());
}

}  // namespace sluice
