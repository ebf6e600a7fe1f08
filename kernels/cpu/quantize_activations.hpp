// Activations quantised on the fly to Q8_0-style blocks (32 int8 + one f32 scale + their sum), the partner of
// the fused quantised-weight dots in quant_dot.hpp (as llama.cpp pairs Q8_0/Q4_0 with Q8_0).
#pragma once

#include <cstdint>

namespace sluice::cpu {

struct ActivationBlockQ8 {
    float d;        // x ≈ d * qs
    int8_t qs[32];  // in [-127, 127]
    int32_t sum;    // sum of qs: lets K-quant kernels apply the per-sub-block minimum once
};

// n must be a multiple of 32; writes n / 32 blocks.
void quantize_activations_q8(const float* x, ActivationBlockQ8* out, int64_t n);

}  // namespace sluice::cpu
