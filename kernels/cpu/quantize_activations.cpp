#include "kernels/cpu/quantize_activations.hpp"

#include <cmath>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/half.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/intrinsics_warnings.hpp"

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

#if defined(__x86_64__)
// The loop below with AVX-512 (its cost had been ~40% of the absorb it feeds): the same amax, the
// same inverse, d rounded to f16 by F16C (as the AVX-512 quantisers do: the same bits as
// f32_to_f16) and vcvtps2dq's round to nearest even, round_small's rounding for |v| <= 127.
SLUICE_INTRINSICS_WARNINGS_OFF
__attribute__((target("avx512f,avx512dq,f16c"))) void round_through_q8_avx512(const float* x, float* out, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 32) {
        const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
        constexpr int kNanOrInfinite = 0x01 | 0x08 | 0x10 | 0x80;  // vfpclassps: QNaN, +inf, -inf, SNaN
        if (_mm512_fpclass_ps_mask(lo, kNanOrInfinite) | _mm512_fpclass_ps_mask(hi, kNanOrInfinite)) {
            _mm512_storeu_ps(out, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
            _mm512_storeu_ps(out + 16, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
            continue;
        }
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        const float d_scalar = _cvtsh_ss(_cvtss_sh(q8_scale_before_f16(amax), _MM_FROUND_TO_NEAREST_INT));
        if (d_scalar == 0.0f) {
            _mm512_storeu_ps(out, _mm512_setzero_ps());
            _mm512_storeu_ps(out + 16, _mm512_setzero_ps());
            continue;
        }
        const __m512 inv = _mm512_set1_ps(q8_inverse_scale(amax));
        const __m512 d = _mm512_set1_ps(d_scalar);
        _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inv))), d));
        _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inv))), d));
    }
}
SLUICE_INTRINSICS_WARNINGS_ON
#endif

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

void round_through_q8(const float* x, float* out, int64_t n) {
#if defined(__x86_64__)
    if (cpu_path() == CpuPath::avx512) return round_through_q8_avx512(x, out, n);
#endif
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 32) {
        float amax = 0.0f;
        bool finite = true;
        for (int i = 0; i < 32; ++i) {
            finite = finite && std::isfinite(x[i]);
            amax = std::fmax(amax, std::fabs(x[i]));
        }
        const float inv = q8_inverse_scale(amax), d = f16_to_f32(f32_to_f16(q8_scale_before_f16(amax)));
        for (int i = 0; i < 32; ++i)
            out[i] = !finite ? std::numeric_limits<float>::quiet_NaN() : d == 0.0f ? 0.0f : float(round_small(x[i] * inv)) * d;
    }
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
