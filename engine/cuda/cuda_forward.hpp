// The DeepSeek-V3 forward pass on a CUDA device: the same steps, ModelLayout and WeightProvider
// as engine/deepseek_v3 (the CPU pass, which stays the reference), with activations and the
// latent cache in device memory. Weights arrive from the provider as host views and are copied
// to the device by a DeviceWeightCache (all of them once, when the budget holds the model).
// Decode-sized steps (<= gemm_min_tokens - 1 tokens) use the fp32 GEMV kernels; larger steps
// use dequantise + cuBLAS BF16 GEMM. The latent absorb / value products run in fp32 (cuBLAS
// batched SGEMM over heads on a dequantised kv_b, k_b or v_b).
// One sequence; batched multi-sequence steps remain on the CPU pass.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/model_layout.hpp"
#include "engine/weight_provider.hpp"

namespace sluice::cuda {

struct CudaForwardOptions {
    int64_t max_context = 4096;
    int64_t max_batch_tokens = 128;
    int64_t gemm_min_tokens = 16;                 // steps this long or longer use tensor-core GEMM
    int64_t weight_budget_bytes = int64_t(64) << 30;  // device bytes for weight copies
};

class CudaForward {
public:
    // Throws sluice::Error (unsupported) when the build has no CUDA or there is no device.
    CudaForward(const ModelLayout& layout, WeightProvider& weights, CudaForwardOptions options);
    ~CudaForward();
    CudaForward(const CudaForward&) = delete;
    CudaForward& operator=(const CudaForward&) = delete;

    // Runs `tokens` at the next positions, appending to the latent cache. Writes host logits
    // [tokens.size(), vocab] when all_logits, else [1, vocab] for the last token.
    void forward(std::span<const int32_t> tokens, bool all_logits, float* logits);

    int64_t position() const { return n_past_; }
    void truncate(int64_t n);
    const ModelLayout& layout() const { return layout_; }
    // Device bytes of activations and cache (weights excluded), and of weight copies.
    int64_t allocated_bytes() const;
    int64_t weight_bytes() const;

private:
    struct State;
    void run_step(std::span<const int32_t> tokens, bool all_logits, float* logits);

    ModelLayout layout_;
    WeightProvider& weights_;
    CudaForwardOptions options_;
    int64_t n_past_ = 0;
    std::unique_ptr<State> state_;
};

}  // namespace sluice::cuda
