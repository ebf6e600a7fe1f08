#include "engine/memory_planner.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "io/segment_reader.hpp"

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

uint64_t StagingPool::bytes() const {
    return count > 0 ? AlignedBuffer::held_bytes(size_t(slot_bytes) * size_t(count), AlignedBuffer::kHugePageBytes, true)
                     : 0;
}

StagingPool staging_pool(uint64_t largest_read_bytes, int count, size_t io_alignment) {
    return {AlignedBuffer::round_up(size_t(largest_read_bytes), std::max<size_t>(io_alignment, 1)), count};
}

uint64_t segment_read_bytes(const Segment& segment) {
    std::vector<Extent> extents;
    segment.extents(extents);
    return io::SegmentReader::buffer_bytes_for(extents);
}

int dense_buffer_count(int prefetch_layers, int n_layers) {
    return std::clamp(prefetch_layers + 1, 1, std::max(n_layers, 1));
}

namespace {
double gib(uint64_t b) { return double(b) / (1 << 30); }
double mib(uint64_t b) { return double(b) / (1 << 20); }
}  // namespace

MemoryPlan plan_memory(const ModelLayout& d, const ModelPlan& model, const MemoryRequest& req) {
    MemoryPlan p;
    p.held_bytes = req.held_bytes;
    // Weights: what reading them into memory holds, and the largest read a staging buffer takes.
    uint64_t largest_dense_read = 0, largest_expert_read = 0;
    int n_expert_segments = 0;
    for (const auto& l : model.layers) {
        p.global_bytes += resident_vector_bytes(l.vectors);
        p.resident_dense_bytes += resident_segment_bytes(l.dense);
        largest_dense_read = std::max(largest_dense_read, segment_read_bytes(l.dense));
        for (const auto& e : l.experts) {
            p.resident_expert_bytes += resident_segment_bytes(e);
            largest_expert_read = std::max(largest_expert_read, segment_read_bytes(e));
            ++n_expert_segments;
        }
    }
    p.global_bytes += resident_segment_bytes(model.globals) + resident_vector_bytes(model.global_vectors);
    const uint64_t all_dense = p.resident_dense_bytes;

    // The forward passes, one at a time: the largest, and the largest kernel scratch (kept by the
    // threads from one pass to the next).
    uint64_t largest_pass = 0;
    for (const RunShape& shape : req.shapes) {
        const auto b = DeepseekForward::bytes_for(d, ForwardOptions{shape}, req.n_threads);
        const uint64_t logits = AlignedBuffer::held_bytes(size_t(shape.logits_held()) * size_t(d.vocab) * sizeof(float));
        p.kernel_scratch_bytes = std::max(p.kernel_scratch_bytes, b.kernel_scratch);
        // Spilled layers' caches are on disk; what stays is the resident layers' and the buffer.
        const int resident_layers = req.cache_resident_layers < 0 ? d.n_layers : std::min(req.cache_resident_layers, d.n_layers);
        const uint64_t spilled = d.n_layers > 0 ? b.mla_cache / uint64_t(d.n_layers) * uint64_t(d.n_layers - resident_layers) : 0;
        const uint64_t mla = b.mla_cache - spilled + (spilled > 0 ? req.cache_spill_buffer_bytes : 0);
        if (mla + b.activations + logits >= largest_pass) {
            largest_pass = mla + b.activations + logits;
            p.shape = shape;
            p.mla_cache_bytes = mla;
            p.mla_spilled_bytes = spilled;
            p.activation_bytes = b.activations;
            p.logits_bytes = logits;
        }
    }
    if (req.other_pass_bytes > largest_pass) {
        p.other_pass_bytes = req.other_pass_bytes;
        largest_pass = req.other_pass_bytes;
    }
    const uint64_t fixed = p.held_bytes + p.global_bytes + largest_pass + p.kernel_scratch_bytes;

    const size_t io_alignment = io::SegmentReader::buffer_alignment();
    const StagingPool dense_pool =
        staging_pool(largest_dense_read, dense_buffer_count(req.prefetch_layers, int(model.layers.size())), io_alignment);
    p.expert_slots = n_expert_segments == 0 ? 0 : req.expert_slots > 0 ? req.expert_slots : 2 * std::max(d.router.top_k, 1);
    const StagingPool expert_staging = staging_pool(largest_expert_read, p.expert_slots, io_alignment);
    p.minimum_bytes = fixed + dense_pool.bytes() + expert_staging.bytes();

    switch (req.resident) {
        case ResidentMode::all:  // everything in memory: no staging at all
            p.expert_slots = 0;
            break;
        case ResidentMode::none:
            p.resident_dense_bytes = p.resident_expert_bytes = 0;
            p.dense_pool = dense_pool;
            p.expert_pool = expert_staging;
            break;
        case ResidentMode::dense:
            p.resident_expert_bytes = 0;
            p.expert_pool = expert_staging;
            break;
        case ResidentMode::automatic: {
            // Dense parts first (read every step), then as many experts as the budget holds,
            // as a cache in the expert pool.
            p.resident_dense_bytes = p.resident_expert_bytes = 0;
            p.dense_pool = dense_pool;
            p.expert_pool = expert_staging;
            if (req.ram_budget_bytes > 0 && fixed + all_dense + expert_staging.bytes() <= req.ram_budget_bytes) {
                p.resident_dense_bytes = all_dense;
                p.dense_pool = {};
            }
            const uint64_t used = fixed + p.resident_dense_bytes + p.dense_pool.bytes();
            if (req.ram_budget_bytes > used && expert_staging.slot_bytes > 0) {
                // The pool is one mapping rounded to 2 MiB: count the buffers in whole huge pages.
                const uint64_t room = (req.ram_budget_bytes - used) / AlignedBuffer::kHugePageBytes *
                                      AlignedBuffer::kHugePageBytes;
                const uint64_t fit = room / expert_staging.slot_bytes;
                p.expert_pool.count = int(std::clamp<uint64_t>(fit, uint64_t(p.expert_slots),
                                                               uint64_t(p.expert_slots + n_expert_segments)));
            }
            break;
        }
    }
    p.total_bytes = fixed + p.resident_dense_bytes + p.resident_expert_bytes + p.staging_bytes();
    p.fits = req.ram_budget_bytes == 0 || p.total_bytes <= req.ram_budget_bytes;
    if (!p.fits) {
        if (p.minimum_bytes > req.ram_budget_bytes)
            fail(ErrorKind::out_of_memory,
                 "the model needs at least {:.2f} GiB with --resident none for {} sequence(s) of {} positions, {} tokens "
                 "a step ({}); the budget is {:.2f} GiB: raise --ram to at least {:.2f} GiB, or plan fewer positions, sequences or "
                 "tokens a step (run, bench: --context, --batch-sizes, -b; batch, serve: --context, --max-seqs, --max-step-tokens)",
                 gib(p.minimum_bytes), p.shape.n_sequences, p.shape.positions, p.shape.step_tokens, p.describe(),
                 gib(req.ram_budget_bytes), gib(p.minimum_bytes));
        fail(ErrorKind::out_of_memory,
             "--resident {} needs {:.2f} GiB ({}), over the budget of {:.2f} GiB; --resident none needs {:.2f} GiB",
             resident_mode_name(req.resident), gib(p.total_bytes), p.describe(), gib(req.ram_budget_bytes),
             gib(p.minimum_bytes));
    }
    return p;
}

RunMemoryPlan plan_run_memory(const ModelLayout& layout, const ModelPlan& model, const MemoryRequest& request) {
    MemoryRequest req = request;
    if (req.resident == ResidentMode::automatic && req.ram_budget_bytes > 0) {
        MemoryRequest all = req;
        all.ram_budget_bytes = 0;
        all.resident = ResidentMode::all;
        if (plan_memory(layout, model, all).total_bytes <= req.ram_budget_bytes) req.resident = ResidentMode::all;
    }
    return {req.resident, plan_memory(layout, model, req)};
}

std::string MemoryPlan::describe() const {
    return fmt::format(
        "staging {:.2f} GiB ({} dense buffers x {:.1f} MiB + {} expert buffers x {:.1f} MiB, {} of them cache), "
        "globals {:.2f} GiB, resident dense {:.2f} GiB, resident experts {:.2f} GiB, MLA cache {:.2f} GiB{}, activations "
        "{:.2f} GiB, logits {:.2f} GiB, kernel scratch {:.2f} GiB, other pass {:.2f} GiB, process before {:.2f} GiB; total "
        "{:.2f} GiB",
        gib(staging_bytes()), dense_pool.count, mib(dense_pool.slot_bytes), expert_pool.count, mib(expert_pool.slot_bytes),
        expert_cache_entries(), gib(global_bytes), gib(resident_dense_bytes), gib(resident_expert_bytes),
        gib(mla_cache_bytes),
        mla_spilled_bytes ? fmt::format(" (+ {:.2f} GiB spilled to disk)", gib(mla_spilled_bytes)) : std::string(),
        gib(activation_bytes), gib(logits_bytes), gib(kernel_scratch_bytes), gib(other_pass_bytes),
        gib(held_bytes),
        gib(total_bytes));
}

nlohmann::json MemoryPlan::to_json() const {
    return {{"total", total_bytes},
            {"staging", staging_bytes()},
            {"globals", global_bytes},
            {"resident_dense", resident_dense_bytes},
            {"resident_experts", resident_expert_bytes},
            {"dense_buffers", dense_pool.count},
            {"expert_buffers", expert_pool.count},
            {"expert_cache_entries", expert_cache_entries()},
            {"mla_cache", mla_cache_bytes},
            {"activations", activation_bytes},
            {"logits", logits_bytes},
            {"kernel_scratch", kernel_scratch_bytes},
            {"other_pass", other_pass_bytes},
            {"process_before", held_bytes}};
}

}  // namespace sluice
