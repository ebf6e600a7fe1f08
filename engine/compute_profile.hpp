// How fast this machine's CPU runs the pieces of one forward step of a given model, measured on
// the model's own shapes and types with random weights (so a 671B model's pieces can be timed
// without its file): the dense part of a layer (norms, MLA attention, shared expert) as the forward
// pass itself runs it, and each routed-expert, router, head and dense-MLP matrix product, at
// several token counts. `sluice plan` turns these into compute time per step.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/thread_pool.hpp"
#include "engine/model_loader.hpp"

namespace sluice {

// Seconds as a function of tokens, from measured points: interpolated linearly between them,
// constant below the first, and beyond the last proportional to tokens at the last point's
// seconds per token (the products are compute-bound there).
struct TimeCurve {
    std::vector<std::pair<double, double>> points;  // (tokens, seconds), tokens ascending
    double at(double tokens) const;
    nlohmann::json to_json() const;
    static TimeCurve from_json(const nlohmann::json& j);
};

// One matrix shape of the model as it is timed: `scale` times the product of its first `rows`
// rows (large matrices are timed on a slice and scaled up by rows).
struct MatrixTiming {
    std::string what;         // "expert gate Q4_K 2048x7168", ...
    DType type = DType::F32;
    int64_t rows = 0, cols = 0;
    TimeCurve seconds;        // of the whole matrix at n tokens
};

struct CpuComputeProfile {
    int threads = 0;
    // The dense part of a MoE layer (attention with the model's projections, the shared expert,
    // norms), run by the forward pass on one resident layer: seconds at n tokens starting at
    // position 0 (causal inside the chunk).
    TimeCurve dense_part;
    // Attention's growth with the positions already cached: extra seconds per token per cached
    // position, for one-token (absorbed form) and many-token (decompressed form) steps.
    double absorbed_seconds_per_token_position = 0;
    double decompressed_seconds_per_token_position = 0;
    std::vector<MatrixTiming> matrices;  // every distinct expert, shared-expert, router, head, dense-MLP shape
    double seconds_spent = 0;            // measuring

    // The timing of a matrix of this type and shape, or null.
    const MatrixTiming* find(DType type, int64_t rows, int64_t cols) const;
    nlohmann::json to_json() const;
    // What to_json wrote (`sluice plan --compute-profile FILE` reuses a measurement); errors name `source`.
    static CpuComputeProfile from_json(const nlohmann::json& j, const std::string& source);
};

struct ComputeProbeOptions {
    double seconds_per_point = 0.05;     // the median of the runs (at least 3) within about this long
    int64_t large_chunk = 64;            // the longest chunk timed (products scale linearly past it)
    int64_t slope_context = 256;         // cached positions the attention slopes are measured over
    uint64_t working_set_bytes = 256ull << 20;  // matrices rotate through copies this large (not cache-resident)
};

// Measures on `pool`'s threads. The model may be a shapes-only one (open_shape_model): only its
// plan's types and shapes are used.
CpuComputeProfile measure_cpu_compute(const OpenModel& model, ThreadPool& pool, const ComputeProbeOptions& options = {});

}  // namespace sluice
