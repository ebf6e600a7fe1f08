// The forward passes `sluice bench` runs and the memory its plan holds for them, in one place:
// bench runs them, and `sluice plan --bench` plans and predicts the same (so the two cannot drift).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/deepseek_v3.hpp"
#include "engine/model_loader.hpp"

namespace sluice::cli {

struct BenchPass {
    int64_t size = 0;  // a prompt's tokens, or the sequences decoding together
    RunShape shape;
};

struct BenchPasses {
    // Each prompt from position 0 in steps of min(-b, length), the first one followed by the decode
    // steps; then for each batch size b sequences of 4-token prompts, read in steps of whole prompts
    // (up to -b tokens, at least one prompt), decoding together. One logits buffer of a row per
    // sequence of the widest batch serves them all.
    std::vector<BenchPass> prompts, batches;
    static constexpr int64_t kBatchPromptTokens = 4;
    // bench --json's GEMM-rate pass (roofline inputs): what it holds while it runs; 0 without it.
    uint64_t gemm_rate_bytes = 0;
    std::vector<RunShape> shapes() const;
};

BenchPasses bench_passes(const OpenModel& model, const std::vector<int64_t>& prompt_lengths,
                         const std::vector<int64_t>& batch_sizes, int64_t decode_steps, int64_t batch_tokens,
                         int n_threads, bool gemm_rate_pass);

// The matrices the GEMM-rate pass measures: the first routed expert's first, and the largest dense one.
struct RooflineMatrices {
    const PlannedTensor* expert = nullptr;
    const PlannedTensor* dense = nullptr;
};
RooflineMatrices roofline_matrices(const ModelPlan& plan);
// Token counts it measures them at: a prompt's tokens x top_k spread over the experts for an
// expert, the prompt's tokens (up to a step) for a dense matrix.
int64_t roofline_expert_tokens(const ModelLayout& layout, int64_t prompt_tokens);
// What measuring one matrix holds: the matrix, its scales, the activations in and out.
uint64_t gemm_rate_bytes(const PlannedTensor& t, int64_t n_tokens);

}  // namespace sluice::cli
