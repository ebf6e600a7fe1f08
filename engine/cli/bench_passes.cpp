#include "engine/cli/bench_passes.hpp"

#include <algorithm>

#include "core/aligned_buffer.hpp"
#include "kernels/cpu/matmul.hpp"

namespace sluice::cli {

std::vector<RunShape> BenchPasses::shapes() const {
    std::vector<RunShape> s;
    for (const auto& p : prompts) s.push_back(p.shape);
    for (const auto& p : batches) s.push_back(p.shape);
    return s;
}

BenchPasses bench_passes(const OpenModel& model, const std::vector<int64_t>& prompt_lengths,
                         const std::vector<int64_t>& batch_sizes, int64_t decode_steps, int64_t batch_tokens,
                         int n_threads, bool gemm_rate_pass) {
    int64_t longest = 0, widest = 1;
    for (auto p : prompt_lengths) longest = std::max(longest, p);
    for (auto b : batch_sizes) widest = std::max(widest, b);
    constexpr int64_t k = BenchPasses::kBatchPromptTokens;
    BenchPasses passes;
    for (int64_t len : prompt_lengths)
        passes.prompts.push_back({len, RunShape{1, len + decode_steps + 2, std::min(batch_tokens, len), widest}});
    for (int64_t b : batch_sizes) {
        const int64_t step = std::max(b, std::min(k * b, std::max<int64_t>(batch_tokens / k, 1) * k));
        passes.batches.push_back({b, RunShape{int(b), k + decode_steps + 2, step, widest}});
    }
    if (gemm_rate_pass) {
        const auto m = roofline_matrices(model.plan);
        const int64_t dense_tokens = std::min(longest, batch_tokens);
        const int64_t expert_tokens = roofline_expert_tokens(model.layout, longest);
        if (m.expert)
            passes.gemm_rate_bytes = std::max(passes.gemm_rate_bytes, gemm_rate_bytes(*m.expert, expert_tokens) +
                                                                          cpu::gemm_scratch_bytes(expert_tokens, m.expert->cols, n_threads));
        if (m.dense)
            passes.gemm_rate_bytes = std::max(passes.gemm_rate_bytes, gemm_rate_bytes(*m.dense, dense_tokens) +
                                                                          cpu::gemm_scratch_bytes(dense_tokens, m.dense->cols, n_threads));
    }
    return passes;
}

RooflineMatrices roofline_matrices(const ModelPlan& plan) {
    RooflineMatrices m;
    for (const auto& l : plan.layers) {
        if (!l.experts.empty() && !m.expert) m.expert = &l.experts[0].tensors[0];
        for (const auto& t : l.dense.tensors)
            if (t.rows > 1 && (!m.dense || t.extent.length > m.dense->extent.length)) m.dense = &t;
    }
    return m;
}

int64_t roofline_expert_tokens(const ModelLayout& d, int64_t prompt_tokens) {
    return std::max<int64_t>(1, prompt_tokens * std::max(d.router.top_k, 1) / std::max<int64_t>(d.n_experts, 1));
}

uint64_t gemm_rate_bytes(const PlannedTensor& t, int64_t n_tokens) {
    return AlignedBuffer::held_bytes(size_t(t.extent.length)) +
           AlignedBuffer::held_bytes(size_t(std::max<uint64_t>(t.scales.length, 64))) +
           AlignedBuffer::held_bytes(size_t(n_tokens * t.cols) * sizeof(float)) +
           AlignedBuffer::held_bytes(size_t(n_tokens * t.rows) * sizeof(float));
}

}  // namespace sluice::cli
