// Activations quantised on the fly to int8, the partner of the fused quantised-weight dots in
// quant_dot.hpp (as llama.cpp pairs Q8_0/Q4_0 weights with Q8_0 and K-quants with Q8_K).
#pragma once

#include <cstdint>

namespace sluice::cpu {

// Per 32 elements: for Q8_0 / Q4_0 weights, whose scales are per 32 too.
struct ActivationBlockQ8 {
    float d;        // x ≈ d * qs
    int8_t qs[32];  // in [-127, 127]
    int32_t sum;    // sum of qs
};

// Per 256 elements (one K-quant super-block): a single scale per super-block lets a K-quant
// kernel add up every sub-block's integer dot times its integer scale in int32 and convert to
// float once per super-block. 64-byte aligned so the kernels' 64-byte loads of qs stay in one line.
struct alignas(64) ActivationBlockQ8K {
    int8_t qs[256];     // in [-127, 127]
    int16_t bsums[16];  // sums of qs per 16: the K-quants' minimum / offset terms come from these
    float d;            // x ≈ d * qs
};
static_assert(sizeof(ActivationBlockQ8K) == 320);

// n must be a multiple of 32; writes n / 32 blocks.
void quantize_activations_q8(const float* x, ActivationBlockQ8* out, int64_t n);
// n must be a multiple of 256; writes n / 256 blocks.
void quantize_activations_q8k(const float* x, ActivationBlockQ8K* out, int64_t n);

}  // namespace sluice::cpu
