#include "kernels/cpu/quantize_activations.hpp"

#include <cmath>

#include "core/half.hpp"

namespace sluice::cpu {
namespace {

// Round to nearest (ties to even) without a libm call: adding 1.5 * 2^23 leaves the rounded
// integer in the low mantissa bits. Valid for |v| <= 2^22; ours are within [-127, 127].
inline int32_t round_small(float v) {
    float shifted = v + 12582912.0f;
    int32_t bits;
    __builtin_memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}


}  // namespace

void quantize_activations_q8(const float* x, ActivationGroupQ8* out, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32) {
        ActivationGroupQ8& g = out[b / 8];
        const int slot = int(b % 8);
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[i]));
        const float inv = q8_inverse_scale(amax);
        g.d[slot] = f16_to_f32(f32_to_f16(q8_scale_before_f16(amax)));
        int32_t sum = 0;
        for (int i = 0; i < 32; ++i) {
            g.qs[slot][i] = int8_t(round_small(x[i] * inv));
            sum += g.qs[slot][i];
        }
        g.sum[slot] = sum;
    }
    clear_unused_slots(out, n);
}


void quantize_activations_q8k(const float* x, ActivationBlockQ8K* out, int64_t n) {
    for (int64_t b = 0; b < n / 256; ++b, x += 256) {
        float amax = 0.0f;
        for (int i = 0; i < 256; ++i) amax = std::fmax(amax, std::fabs(x[i]));
        const float inv = q8_inverse_scale(amax);
        out[b].d = q8k_scale(inv);
        for (int g = 0; g < 16; ++g) {
            int32_t sum = 0;
            for (int i = 16 * g; i < 16 * g + 16; ++i) {
                out[b].qs[i] = int8_t(round_small(x[i] * inv));
                sum += out[b].qs[i];
            }
            out[b].bsums[g] = int16_t(sum);
        }
        fill_bsums32(out[b]);
    }
}

}  // namespace sluice::cpu
