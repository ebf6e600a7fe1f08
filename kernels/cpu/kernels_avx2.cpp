// The AVX2 + FMA + F16C path (8 lanes): the shared kernel bodies compiled for that target only,
// so the binary stays baseline x86-64 and picks this at run time.
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
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace sluice::cpu::detail {
namespace avx2_path {

using F = __m256;
constexpr CpuPath kPath = CpuPath::avx2;

struct Simd {
    static constexpr int W = 8;
    // 2 rows x 4 tokens = 8 accumulators + 2 weights + 1 activation of the 16 ymm registers.
    static constexpr int kTileRows = 2;
    static constexpr int kTileTokens = 4;
    // 8 heads x 1 vector = 8 accumulators in the attention weighted sum.
    static constexpr int kSumTileVectors = 1;
    static constexpr int kScoreTileKeys = 1;
    static F zero() { return _mm256_setzero_ps(); }
    static F set1(float v) { return _mm256_set1_ps(v); }
    static F load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
    static F load_f16(const uint16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static F load_bf16(const uint16_t* p) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
    // 8 e4m3fn bytes as f32, divided by 256 (f16 bit placement; see the AVX-512 path).
    static F load_fp8(const uint8_t* p) {
        const __m128i b = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
        return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(b, 7), _mm_set1_epi16(int16_t(0xbf80))));
    }
    static F add(F a, F b) { return _mm256_add_ps(a, b); }
    static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
    static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
    static F div(F a, F b) { return _mm256_div_ps(a, b); }
    static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    static F max(F a, F b) { return _mm256_max_ps(a, b); }
    static F min(F a, F b) { return _mm256_min_ps(a, b); }
    static float reduce_add(F a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static float reduce_max(F a) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static F pow2n(F n) {
        const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
    }
    static F zero_below(F x, float threshold, F y) {
        return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(threshold), _CMP_GE_OQ), y);
    }
};

#include "kernels/cpu/simd_kernels.inc"

}  // namespace avx2_path

const PathKernels& avx2_kernels() { return avx2_path::kKernels; }

}  // namespace sluice::cpu::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
