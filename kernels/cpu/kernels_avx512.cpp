// The AVX-512 path (16 lanes): the shared kernel bodies compiled for that target only, so the
// binary stays baseline x86-64 and picks this at run time.
#include <immintrin.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/half.hpp"
#include "kernels/block_type.hpp"
#include "kernels/dequantize.hpp"
#include "kernels/cpu/kernel_paths.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
// GCC 12 reports its own _mm512_undefined_ps() temporaries inside the intrinsics headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
#endif

namespace sluice::cpu::detail {
namespace avx512_path {

using F = __m512;
constexpr CpuPath kPath = CpuPath::avx512;

struct Simd {
    static constexpr int W = 16;
    // 4 rows x 4 tokens = 16 accumulators + 4 weights + 1 activation of the 32 zmm registers.
    static constexpr int kTileRows = 4;
    static constexpr int kTileTokens = 4;
    // 8 heads x 2 vectors = 16 accumulators in the attention weighted sum.
    static constexpr int kSumTileVectors = 2;
    // 8 queries x 2 keys = 16 accumulators + 2 keys + 1 query in the attention scores.
    static constexpr int kScoreTileKeys = 2;
    static F zero() { return _mm512_setzero_ps(); }
    static F set1(float v) { return _mm512_set1_ps(v); }
    static F load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
    static F load_f16(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static F load_bf16(const uint16_t* p) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    // 16 e4m3fn bytes as f32, divided by 256: sign-extended to 16 bits and shifted so the byte
    // lands in f16 bit positions (sign 15, exponent 13..10, mantissa 9..7; bit 14 cleared), then
    // widened by the hardware converter, which also handles e4m3 subnormals exactly.
    static F load_fp8(const uint8_t* p) {
        const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16(int16_t(0xbf80))));
    }
    static F add(F a, F b) { return _mm512_add_ps(a, b); }
    static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
    static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
    static F div(F a, F b) { return _mm512_div_ps(a, b); }
    static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
    static F max(F a, F b) { return _mm512_max_ps(a, b); }
    static F min(F a, F b) { return _mm512_min_ps(a, b); }
    static float reduce_add(F a) { return _mm512_reduce_add_ps(a); }
    static float reduce_max(F a) { return _mm512_reduce_max_ps(a); }
    // out[i] = the 16 lanes of v[i] added, for 16 vectors at once: pairs, then quads, are folded
    // within each 128-bit lane, then the four lanes across vectors (45 instructions for 16 sums).
    static void reduce_add_16(const F* v, float* out) {
        F pair[8], quad[4];
        for (int k = 0; k < 8; ++k)  // lane: [v2k 0+2, v2k+1 0+2, v2k 1+3, v2k+1 1+3]
            pair[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
        for (int k = 0; k < 4; ++k)  // lane: the lane sums of v4k .. v4k+3
            quad[k] = _mm512_add_ps(_mm512_shuffle_ps(pair[2 * k], pair[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(pair[2 * k], pair[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
        // 128-bit lanes: [q0 L0+L1, q0 L2+L3, q1 L0+L1, q1 L2+L3], the same for q2, q3
        const F half01 = _mm512_add_ps(_mm512_shuffle_f32x4(quad[0], quad[1], 0x88), _mm512_shuffle_f32x4(quad[0], quad[1], 0xDD));
        const F half23 = _mm512_add_ps(_mm512_shuffle_f32x4(quad[2], quad[3], 0x88), _mm512_shuffle_f32x4(quad[2], quad[3], 0xDD));
        _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(half01, half23, 0x88),
                                            _mm512_shuffle_f32x4(half01, half23, 0xDD)));
    }
    static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static F pow2n(F n) {
        const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
    }
    static F zero_below(F x, float threshold, F y) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(threshold), _CMP_GE_OQ), y);
    }
};

#include "kernels/cpu/simd_kernels.inc"

}  // namespace avx512_path

const PathKernels& avx512_kernels() { return avx512_path::kKernels; }

}  // namespace sluice::cpu::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
