#include "kernels/cpu/quantize_activations.hpp"

#include <cmath>

namespace sluice::cpu {

void quantize_activations_q8(const float* x, ActivationBlockQ8* out, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[i]));
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = d;
        int32_t sum = 0;
        for (int i = 0; i < 32; ++i) {
            out[b].qs[i] = int8_t(std::lround(x[i] * inv));
            sum += out[b].qs[i];
        }
        out[b].sum = sum;
    }
}

}  // namespace sluice::cpu
