#include "kernels/cpu/quant_dot.hpp"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/quantize_activations.hpp"
#include "kernels/quant_blocks.hpp"

namespace sluice::cpu {
namespace {
using quant::BlockQ4_0;
using quant::BlockQ8_0;

// Tokens that share one pass over a weight row: each weight block is unpacked once and
// multiplied against this many activation blocks.
constexpr int kTokenGroup = 4;

// ---- scalar ---------------------------------------------------------------------------------
inline void unpack_scalar(const BlockQ8_0& b, int8_t out[32]) {
    for (int i = 0; i < 32; ++i) out[i] = b.qs[i];
}
inline void unpack_scalar(const BlockQ4_0& b, int8_t out[32]) {
    for (int i = 0; i < 16; ++i) {
        out[i] = int8_t((b.qs[i] & 0xF) - 8);
        out[i + 16] = int8_t((b.qs[i] >> 4) - 8);
    }
}

template <typename Block>
void row_group_scalar(const Block* w, int64_t n_blocks, const ActivationBlockQ8* const* a,
                      int n_tok, float* sums) {
    float acc[kTokenGroup] = {};
    int8_t wq[32];
    for (int64_t b = 0; b < n_blocks; ++b) {
        unpack_scalar(w[b], wq);
        const float dw = f16_to_f32(w[b].d);
        for (int t = 0; t < n_tok; ++t) {
            int32_t s = 0;
            for (int i = 0; i < 32; ++i) s += int32_t(wq[i]) * int32_t(a[t][b].qs[i]);
            acc[t] += float(s) * (dw * a[t][b].d);
        }
    }
    for (int t = 0; t < n_tok; ++t) sums[t] = acc[t];
}

// Q4_K: 8 sub-blocks of 32 per super-block, each w = d*sc*q - dmin*m with q in [0, 15]; the
// activations' 32-blocks line up with the sub-blocks, so the min term is dmin*m*da*sum(a).
void row_group_q4_k_scalar(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
                           int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ4_K*>(wv);
    float acc[kTokenGroup] = {};
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d), dmin = f16_to_f32(w[sb].dmin);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            quant::k4_scale_min(j, w[sb].scales, sc, m);
            const uint8_t* q = w[sb].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int t = 0; t < n_tok; ++t) {
                const ActivationBlockQ8& ab = a[t][sb * 8 + j];
                int32_t s = 0;
                for (int i = 0; i < 32; ++i) s += int32_t((q[i] >> shift) & 0xF) * ab.qs[i];
                acc[t] += (d * float(sc)) * ab.d * float(s) - (dmin * float(m)) * ab.d * float(ab.sum);
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) sums[t] = acc[t];
}

// Q5_K: as Q4_K with a fifth bit per weight, bit j of qh[i] for sub-block j.
void row_group_q5_k_scalar(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
                           int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ5_K*>(wv);
    float acc[kTokenGroup] = {};
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d), dmin = f16_to_f32(w[sb].dmin);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            quant::k4_scale_min(j, w[sb].scales, sc, m);
            const uint8_t* q = w[sb].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int t = 0; t < n_tok; ++t) {
                const ActivationBlockQ8& ab = a[t][sb * 8 + j];
                int32_t s = 0;
                for (int i = 0; i < 32; ++i) s += int32_t(((q[i] >> shift) & 0xF) | (((w[sb].qh[i] >> j) & 1) << 4)) * ab.qs[i];
                acc[t] += (d * float(sc)) * ab.d * float(s) - (dmin * float(m)) * ab.d * float(ab.sum);
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) sums[t] = acc[t];
}

// Q6_K: 16 signed 6-bit sub-blocks of 16 (q - 32) with int8 scales; each 32-element activation
// block covers two of them. Chunk c of half h holds ql nibbles and a 2-bit slice of qh.
void row_group_q6_k_scalar(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
                           int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ6_K*>(wv);
    float acc[kTokenGroup] = {};
    int8_t q[32];
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = w[sb].ql + 64 * h;
            const uint8_t* qh = w[sb].qh + 32 * h;
            for (int c = 0; c < 4; ++c) {
                for (int l = 0; l < 32; ++l) {
                    const int nib = (c < 2 ? ql[l + 32 * c] & 0xF : ql[l + 32 * (c - 2)] >> 4);
                    q[l] = int8_t((nib | (((qh[l] >> (2 * c)) & 3) << 4)) - 32);
                }
                const float s0 = d * float(w[sb].scales[8 * h + 2 * c]);
                const float s1 = d * float(w[sb].scales[8 * h + 2 * c + 1]);
                for (int t = 0; t < n_tok; ++t) {
                    const ActivationBlockQ8& ab = a[t][sb * 8 + 4 * h + c];
                    int32_t p0 = 0, p1 = 0;
                    for (int l = 0; l < 16; ++l) p0 += int32_t(q[l]) * ab.qs[l];
                    for (int l = 16; l < 32; ++l) p1 += int32_t(q[l]) * ab.qs[l];
                    acc[t] += (s0 * ab.d) * float(p0) + (s1 * ab.d) * float(p1);
                }
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) sums[t] = acc[t];
}

// ---- AVX2 / AVX-512 VNNI --------------------------------------------------------------------
#define SLUICE_AVX2 __attribute__((target("avx2,fma")))
#define SLUICE_VNNI __attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni")))

SLUICE_AVX2 inline __m256i load_weights(const BlockQ8_0& b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
}
SLUICE_AVX2 inline __m256i load_weights(const BlockQ4_0& b) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
    const __m256i nibbles = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
    return _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8));
}
SLUICE_VNNI inline __m256i load_weights_vnni(const BlockQ8_0& b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
}
SLUICE_VNNI inline __m256i load_weights_vnni(const BlockQ4_0& b) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
    const __m256i nibbles = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
    return _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8));
}

SLUICE_AVX2 inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Signed x signed via the unsigned x signed instructions: |w| * (a with w's sign).
template <typename Block>
SLUICE_AVX2 void row_group_avx2(const Block* w, int64_t n_blocks, const ActivationBlockQ8* const* a,
                                int n_tok, float* sums) {
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    const __m256i ones16 = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < n_blocks; ++b) {
        const __m256i wq = load_weights(w[b]);
        const __m256i wabs = _mm256_sign_epi8(wq, wq);
        const float dw = f16_to_f32(w[b].d);
        for (int t = 0; t < n_tok; ++t) {
            const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[t][b].qs));
            const __m256i p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(aq, wq));
            const __m256i p32 = _mm256_madd_epi16(p16, ones16);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(dw * a[t][b].d), acc[t]);
        }
    }
    for (int t = 0; t < n_tok; ++t) sums[t] = hsum(acc[t]);
}

template <typename Block>
SLUICE_VNNI void row_group_vnni(const Block* w, int64_t n_blocks, const ActivationBlockQ8* const* a,
                                int n_tok, float* sums) {
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    for (int64_t b = 0; b < n_blocks; ++b) {
        const __m256i wq = load_weights_vnni(w[b]);
        const __m256i wabs = _mm256_sign_epi8(wq, wq);
        const float dw = f16_to_f32(w[b].d);
        for (int t = 0; t < n_tok; ++t) {
            const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[t][b].qs));
            const __m256i p32 =
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(aq, wq));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(dw * a[t][b].d), acc[t]);
        }
    }
    for (int t = 0; t < n_tok; ++t) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[t] = _mm_cvtss_f32(s);
    }
}

// unsigned x signed byte dots summed per 4 into int32: maddubs+madd on AVX2, vpdpbusd on VNNI.
SLUICE_AVX2 inline __m256i dot_u8_s8_avx2(__m256i u, __m256i s8) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s8), _mm256_set1_epi16(1));
}
SLUICE_VNNI inline __m256i dot_u8_s8_vnni(__m256i u, __m256i s8) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s8);
}

// The same Q4_K body compiled for each target (a shared template cannot carry both targets).
SLUICE_AVX2 void row_group_q4_k_avx2(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
        int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ4_K*>(wv);
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    float min_acc[kTokenGroup] = {};
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d), dmin = f16_to_f32(w[sb].dmin);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; ++j) quant::k4_scale_min(j, w[sb].scales, sc[j], m[j]);
        for (int pair = 0; pair < 4; ++pair) {
            const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qs + 32 * pair));
            const __m256i q_lo = _mm256_and_si256(packed, low4);
            const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
            const int j0 = 2 * pair, j1 = 2 * pair + 1;
            const float s0 = d * float(sc[j0]), s1 = d * float(sc[j1]);
            const float m0 = dmin * float(m[j0]), m1 = dmin * float(m[j1]);
            for (int t = 0; t < n_tok; ++t) {
                const ActivationBlockQ8& a0 = a[t][sb * 8 + j0];
                const ActivationBlockQ8& a1 = a[t][sb * 8 + j1];
                const __m256i p0 = dot_u8_s8_avx2(q_lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0.qs)));
                const __m256i p1 = dot_u8_s8_avx2(q_hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1.qs)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0 * a0.d), acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1 * a1.d), acc[t]);
                min_acc[t] += m0 * a0.d * float(a0.sum) + m1 * a1.d * float(a1.sum);
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[t] = _mm_cvtss_f32(s) - min_acc[t];
    }
}

SLUICE_AVX2 void row_group_q5_k_avx2(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
        int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ5_K*>(wv);
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    float min_acc[kTokenGroup] = {};
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi8(1);
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d), dmin = f16_to_f32(w[sb].dmin);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; ++j) quant::k4_scale_min(j, w[sb].scales, sc[j], m[j]);
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qh));
        for (int pair = 0; pair < 4; ++pair) {
            const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qs + 32 * pair));
            const __m256i q_lo = _mm256_or_si256(_mm256_and_si256(packed, low4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * pair), one), 4));
            const __m256i q_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(packed, 4), low4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * pair + 1), one), 4));
            const int j0 = 2 * pair, j1 = 2 * pair + 1;
            const float s0 = d * float(sc[j0]), s1 = d * float(sc[j1]);
            const float m0 = dmin * float(m[j0]), m1 = dmin * float(m[j1]);
            for (int t = 0; t < n_tok; ++t) {
                const ActivationBlockQ8& a0 = a[t][sb * 8 + j0];
                const ActivationBlockQ8& a1 = a[t][sb * 8 + j1];
                const __m256i p0 = dot_u8_s8_avx2(q_lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0.qs)));
                const __m256i p1 = dot_u8_s8_avx2(q_hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1.qs)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0 * a0.d), acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1 * a1.d), acc[t]);
                min_acc[t] += m0 * a0.d * float(a0.sum) + m1 * a1.d * float(a1.sum);
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[t] = _mm_cvtss_f32(s) - min_acc[t];
    }
}

SLUICE_VNNI void row_group_q4_k_vnni(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
        int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ4_K*>(wv);
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    float min_acc[kTokenGroup] = {};
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d), dmin = f16_to_f32(w[sb].dmin);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; ++j) quant::k4_scale_min(j, w[sb].scales, sc[j], m[j]);
        for (int pair = 0; pair < 4; ++pair) {
            const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qs + 32 * pair));
            const __m256i q_lo = _mm256_and_si256(packed, low4);
            const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
            const int j0 = 2 * pair, j1 = 2 * pair + 1;
            const float s0 = d * float(sc[j0]), s1 = d * float(sc[j1]);
            const float m0 = dmin * float(m[j0]), m1 = dmin * float(m[j1]);
            for (int t = 0; t < n_tok; ++t) {
                const ActivationBlockQ8& a0 = a[t][sb * 8 + j0];
                const ActivationBlockQ8& a1 = a[t][sb * 8 + j1];
                const __m256i p0 = dot_u8_s8_vnni(q_lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0.qs)));
                const __m256i p1 = dot_u8_s8_vnni(q_hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1.qs)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0 * a0.d), acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1 * a1.d), acc[t]);
                min_acc[t] += m0 * a0.d * float(a0.sum) + m1 * a1.d * float(a1.sum);
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[t] = _mm_cvtss_f32(s) - min_acc[t];
    }
}

SLUICE_VNNI void row_group_q5_k_vnni(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
        int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ5_K*>(wv);
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    float min_acc[kTokenGroup] = {};
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi8(1);
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d), dmin = f16_to_f32(w[sb].dmin);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; ++j) quant::k4_scale_min(j, w[sb].scales, sc[j], m[j]);
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qh));
        for (int pair = 0; pair < 4; ++pair) {
            const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qs + 32 * pair));
            const __m256i q_lo = _mm256_or_si256(_mm256_and_si256(packed, low4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * pair), one), 4));
            const __m256i q_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(packed, 4), low4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * pair + 1), one), 4));
            const int j0 = 2 * pair, j1 = 2 * pair + 1;
            const float s0 = d * float(sc[j0]), s1 = d * float(sc[j1]);
            const float m0 = dmin * float(m[j0]), m1 = dmin * float(m[j1]);
            for (int t = 0; t < n_tok; ++t) {
                const ActivationBlockQ8& a0 = a[t][sb * 8 + j0];
                const ActivationBlockQ8& a1 = a[t][sb * 8 + j1];
                const __m256i p0 = dot_u8_s8_vnni(q_lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0.qs)));
                const __m256i p1 = dot_u8_s8_vnni(q_hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1.qs)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0 * a0.d), acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1 * a1.d), acc[t]);
                min_acc[t] += m0 * a0.d * float(a0.sum) + m1 * a1.d * float(a1.sum);
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[t] = _mm_cvtss_f32(s) - min_acc[t];
    }
}

SLUICE_AVX2 void row_group_q6_k_avx2(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
        int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ6_K*>(wv);
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(3), bias = _mm256_set1_epi8(32);
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d);
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qh + 32 * h));
            for (int c = 0; c < 4; ++c) {
                const __m256i src = c % 2 == 0 ? ql0 : ql1;
                const __m256i nib = c < 2 ? _mm256_and_si256(src, low4)
                                          : _mm256_and_si256(_mm256_srli_epi16(src, 4), low4);
                const __m256i high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), low2), 4);
                const __m256i wq = _mm256_sub_epi8(_mm256_or_si256(nib, high), bias);
                const __m256i wabs = _mm256_sign_epi8(wq, wq);
                const float s0 = d * float(w[sb].scales[8 * h + 2 * c]);
                const float s1 = d * float(w[sb].scales[8 * h + 2 * c + 1]);
                for (int t = 0; t < n_tok; ++t) {
                    const ActivationBlockQ8& ab = a[t][sb * 8 + 4 * h + c];
                    const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
                    const __m256i p32 = dot_u8_s8_avx2(wabs, _mm256_sign_epi8(aq, wq));
                    // int32 lanes 0-3 hold elements 0-15 (scale s0), lanes 4-7 elements 16-31 (s1)
                    const __m256 scale = _mm256_set_m128(_mm_set1_ps(s1 * ab.d), _mm_set1_ps(s0 * ab.d));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), scale, acc[t]);
                }
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[t] = _mm_cvtss_f32(s);
    }
}

SLUICE_VNNI void row_group_q6_k_vnni(const void* wv, int64_t n_sub, const ActivationBlockQ8* const* a,
        int n_tok, float* sums) {
    const auto* w = static_cast<const quant::BlockQ6_K*>(wv);
    __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                               _mm256_setzero_ps()};
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(3), bias = _mm256_set1_epi8(32);
    for (int64_t sb = 0; sb < n_sub / 8; ++sb) {
        const float d = f16_to_f32(w[sb].d);
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[sb].qh + 32 * h));
            for (int c = 0; c < 4; ++c) {
                const __m256i src = c % 2 == 0 ? ql0 : ql1;
                const __m256i nib = c < 2 ? _mm256_and_si256(src, low4)
                                          : _mm256_and_si256(_mm256_srli_epi16(src, 4), low4);
                const __m256i high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), low2), 4);
                const __m256i wq = _mm256_sub_epi8(_mm256_or_si256(nib, high), bias);
                const __m256i wabs = _mm256_sign_epi8(wq, wq);
                const float s0 = d * float(w[sb].scales[8 * h + 2 * c]);
                const float s1 = d * float(w[sb].scales[8 * h + 2 * c + 1]);
                for (int t = 0; t < n_tok; ++t) {
                    const ActivationBlockQ8& ab = a[t][sb * 8 + 4 * h + c];
                    const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
                    const __m256i p32 = dot_u8_s8_vnni(wabs, _mm256_sign_epi8(aq, wq));
                    // int32 lanes 0-3 hold elements 0-15 (scale s0), lanes 4-7 elements 16-31 (s1)
                    const __m256 scale = _mm256_set_m128(_mm_set1_ps(s1 * ab.d), _mm_set1_ps(s0 * ab.d));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), scale, acc[t]);
                }
            }
        }
    }
    for (int t = 0; t < n_tok; ++t) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[t] = _mm_cvtss_f32(s);
    }
}

using RowGroupFn = void (*)(const void*, int64_t, const ActivationBlockQ8* const*, int, float*);

template <typename Block>
RowGroupFn pick(QuantDotPath path) {
    switch (path) {
        case QuantDotPath::scalar:
            return [](const void* w, int64_t n, const ActivationBlockQ8* const* a, int t, float* s) {
                row_group_scalar(static_cast<const Block*>(w), n, a, t, s);
            };
        case QuantDotPath::avx2:
            return [](const void* w, int64_t n, const ActivationBlockQ8* const* a, int t, float* s) {
                row_group_avx2(static_cast<const Block*>(w), n, a, t, s);
            };
        case QuantDotPath::avx512_vnni:
            return [](const void* w, int64_t n, const ActivationBlockQ8* const* a, int t, float* s) {
                row_group_vnni(static_cast<const Block*>(w), n, a, t, s);
            };
    }
    return nullptr;
}

// Grows only: after the first call of a given size no further allocation happens.
thread_local std::vector<ActivationBlockQ8> t_activation_scratch;

RowGroupFn pick_q4_k(QuantDotPath path) {
    switch (path) {
        case QuantDotPath::scalar: return row_group_q4_k_scalar;
        case QuantDotPath::avx2: return row_group_q4_k_avx2;
        case QuantDotPath::avx512_vnni: return row_group_q4_k_vnni;
    }
    return nullptr;
}

RowGroupFn pick_q6_k(QuantDotPath path) {
    switch (path) {
        case QuantDotPath::scalar: return row_group_q6_k_scalar;
        case QuantDotPath::avx2: return row_group_q6_k_avx2;
        case QuantDotPath::avx512_vnni: return row_group_q6_k_vnni;
    }
    return nullptr;
}

RowGroupFn pick_q5_k(QuantDotPath path) {
    switch (path) {
        case QuantDotPath::scalar: return row_group_q5_k_scalar;
        case QuantDotPath::avx2: return row_group_q5_k_avx2;
        case QuantDotPath::avx512_vnni: return row_group_q5_k_vnni;
    }
    return nullptr;
}

}  // namespace

bool quant_dot_supports(DType type) {
    return type == DType::Q8_0 || type == DType::Q4_0 || type == DType::Q4_K || type == DType::Q5_K ||
           type == DType::Q6_K;
}

bool quant_dot_path_available(QuantDotPath path) {
    const auto& f = detect_cpu_features();
    switch (path) {
        case QuantDotPath::scalar: return true;
        case QuantDotPath::avx2: return f.avx2 && f.fma;
        case QuantDotPath::avx512_vnni: return f.avx2 && f.fma && f.avx512f && f.avx512vl && f.avx512vnni;
    }
    return false;
}

QuantDotPath best_quant_dot_path() {
    if (cpu_path() == CpuPath::scalar) return QuantDotPath::scalar;
    if (cpu_path() == CpuPath::avx512 && quant_dot_path_available(QuantDotPath::avx512_vnni))
        return QuantDotPath::avx512_vnni;
    return QuantDotPath::avx2;
}

void quant_gemm_on_path(QuantDotPath path, const Matrix& w, const float* x, int64_t x_stride,
                        int64_t n_tokens, float* y, int64_t y_stride, ThreadPool& pool) {
    if (!quant_dot_supports(w.type))
        fail(ErrorKind::unsupported, "quant_gemm: no fused kernel for {}", dtype_name(w.type));
    if (!row_fits_blocks(w.type, w.cols))
        fail(ErrorKind::invalid_input, "quant_gemm: {} columns are not whole {} blocks", w.cols,
             dtype_name(w.type));
    if (!quant_dot_path_available(path))
        fail(ErrorKind::unsupported, "quant_gemm: requested kernel path not available on this CPU");
    const int64_t n_blocks = w.cols / 32;
    auto& scratch = t_activation_scratch;
    if (scratch.size() < size_t(n_blocks * n_tokens)) scratch.resize(size_t(n_blocks * n_tokens));
    for (int64_t t = 0; t < n_tokens; ++t)
        quantize_activations_q8(x + t * x_stride, scratch.data() + t * n_blocks, w.cols);
    const ActivationBlockQ8* acts = scratch.data();
    const RowGroupFn fn = w.type == DType::Q8_0   ? pick<BlockQ8_0>(path)
                          : w.type == DType::Q4_0 ? pick<BlockQ4_0>(path)
                          : w.type == DType::Q4_K ? pick_q4_k(path)
                          : w.type == DType::Q5_K ? pick_q5_k(path)
                                                  : pick_q6_k(path);
    const int64_t row_bytes = w.bytes_per_row();
    const auto* base = static_cast<const uint8_t*>(w.data);
    pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) {
        const ActivationBlockQ8* a[kTokenGroup];
        float sums[kTokenGroup];
        for (int64_t r = r0; r < r1; ++r) {
            for (int64_t t0 = 0; t0 < n_tokens; t0 += kTokenGroup) {
                const int n_tok = int(std::min<int64_t>(kTokenGroup, n_tokens - t0));
                for (int t = 0; t < n_tok; ++t) a[t] = acts + (t0 + t) * n_blocks;
                fn(base + r * row_bytes, n_blocks, a, n_tok, sums);
                for (int t = 0; t < n_tok; ++t) y[(t0 + t) * y_stride + r] = sums[t];
            }
        }
    }, 16);
}

void quant_gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
                int64_t y_stride, ThreadPool& pool) {
    quant_gemm_on_path(best_quant_dot_path(), w, x, x_stride, n_tokens, y, y_stride, pool);
}

}  // namespace sluice::cpu
