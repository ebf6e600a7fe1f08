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
