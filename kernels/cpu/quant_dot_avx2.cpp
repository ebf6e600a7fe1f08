// The AVX2 path of the fused quantised dots (quant_dot.hpp): the AVX-512 path's scheme on 256-bit
// vectors (eight vectors of 32 weights per K-quant super-block, vpmaddubsw + vpmaddwd with the
// per-16 scales, int32 across the super-block, one float conversion per super-block). See
// quant_dot_scalar.cpp for the decomposition every type is read into.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/quant_dot_kernels.hpp"
#include "kernels/quant_blocks.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace sluice::cpu::quant_kernels {
namespace {

using namespace sluice::quant;

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Q4_K / Q5_K: eight 6-bit (scale, min) pairs in 12 bytes -> scales in bytes 0-7, mins in 8-15.
inline __m128i k4_scales_mins(const uint8_t* packed) {
    uint32_t w[4];
    std::memcpy(w, packed, 12);
    constexpr uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    w[3] = ((w[2] >> 4) & low4) | (((w[1] >> 6) & low2) << 4);
    const uint32_t mins_0_3 = w[1] & low6;
    w[1] = (w[2] & low4) | (((w[0] >> 6) & low2) << 4);
    w[2] = mins_0_3;
    w[0] &= low6;
    // from registers: a 16-byte load of the four 4-byte stores would miss store forwarding
    return _mm_setr_epi32(int(w[0]), int(w[1]), int(w[2]), int(w[3]));
}
// The f16 pair (d, dmin) at p as two all-lane float vectors; the single d of Q3_K / Q6_K as one.
inline void half_pair(const uint16_t* p, __m256& d, __m256& dmin) {
    uint32_t both;
    std::memcpy(&both, p, 4);
    const __m256 pairs = _mm256_cvtph_ps(_mm_set1_epi32(int(both)));  // d, dmin, d, dmin, ...
    d = _mm256_permute_ps(pairs, 0x00);
    dmin = _mm256_permute_ps(pairs, 0x55);
}
inline __m256 half_all(uint16_t h) { return _mm256_cvtph_ps(_mm_set1_epi16(short(h))); }
inline __m256i per16_from_per32(__m128i bytes8) { return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(bytes8, bytes8)); }
// bit `bit` of each byte of v, moved to bit `to`
inline __m256i bit_to(__m256i v, int bit, int to) {
    return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(v, bit), _mm256_set1_epi8(1)), to);
}

struct Q2K {
    using Block = BlockQ2_K;
    static constexpr bool kOffsetAtScaleD = false;
    const Block& b;
    __m256i s, c;
    __m256 d, cd;
    explicit Q2K(const Block& blk) : b(blk) {
        const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
        s = _mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0xF)));
        c = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0xF)));
        half_pair(&b.d, d, cd);
    }
    // elements 32v..32v+31: 2-bit field v%4 of qs[32(v/4) ..]
    __m256i weights(int v) const {
        return _mm256_and_si256(_mm256_srli_epi16(load32(b.qs + 32 * (v / 4)), 2 * (v % 4)), _mm256_set1_epi8(3));
    }
};

struct Q3K {
    using Block = BlockQ3_K;
    static constexpr bool kOffsetAtScaleD = true;
    const Block& b;
    __m256i s, c, hmask;
    __m256 d, cd;
    explicit Q3K(const Block& blk) : b(blk) {
        // the 12 scale bytes, read as 8 + 4 (a 16-byte read could pass the end of the last block)
        uint64_t lo8;
        uint32_t hi4;
        std::memcpy(&lo8, b.scales, 8);
        std::memcpy(&hi4, b.scales + 8, 4);
        const __m128i p = _mm_insert_epi32(_mm_cvtsi64_si128(int64_t(lo8)), int(hi4), 2);
        const __m128i low4 = _mm_set1_epi8(0xF);
        const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(p, low4), _mm_and_si128(_mm_srli_epi16(p, 4), low4));
        __m128i high = _mm_shuffle_epi8(p, _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11));
        high = _mm_and_si128(_mm_srlv_epi32(high, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
        const __m128i s8 = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), _mm_set1_epi8(32));
        s = _mm256_cvtepi8_epi16(s8);
        c = _mm256_slli_epi16(s, 2);
        hmask = load32(b.hmask);
        d = cd = half_all(b.d);
    }
    __m256i weights(int v) const {
        const __m256i q2 = _mm256_and_si256(_mm256_srli_epi16(load32(b.qs + 32 * (v / 4)), 2 * (v % 4)), _mm256_set1_epi8(3));
        return _mm256_or_si256(q2, bit_to(hmask, v, 2));
    }
};

struct Q4K {
    using Block = BlockQ4_K;
    static constexpr bool kOffsetAtScaleD = false;
    const Block& b;
    __m256i s, c;
    __m256 d, cd;
    explicit Q4K(const Block& blk) : b(blk) {
        const __m128i sm = k4_scales_mins(b.scales);
        s = per16_from_per32(sm);
        c = per16_from_per32(_mm_unpackhi_epi64(sm, sm));
        half_pair(&b.d, d, cd);
    }
    __m256i weights(int v) const {
        return _mm256_and_si256(_mm256_srli_epi16(load32(b.qs + 32 * (v / 2)), 4 * (v % 2)), _mm256_set1_epi8(0xF));
    }
};

struct Q5K {
    using Block = BlockQ5_K;
    static constexpr bool kOffsetAtScaleD = false;
    const Block& b;
    __m256i s, c, qh;
    __m256 d, cd;
    explicit Q5K(const Block& blk) : b(blk) {
        const __m128i sm = k4_scales_mins(b.scales);
        s = per16_from_per32(sm);
        c = per16_from_per32(_mm_unpackhi_epi64(sm, sm));
        qh = load32(b.qh);
        half_pair(&b.d, d, cd);
    }
    __m256i weights(int v) const {
        const __m256i q4 = _mm256_and_si256(_mm256_srli_epi16(load32(b.qs + 32 * (v / 2)), 4 * (v % 2)), _mm256_set1_epi8(0xF));
        return _mm256_or_si256(q4, bit_to(qh, v, 4));
    }
};

struct Q6K {
    using Block = BlockQ6_K;
    static constexpr bool kOffsetAtScaleD = true;
    const Block& b;
    __m256i s, c;
    __m256 d, cd;
    explicit Q6K(const Block& blk) : b(blk) {
        s = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)));
        c = _mm256_slli_epi16(s, 5);
        d = cd = half_all(b.d);
    }
    __m256i weights(int v) const {
        const int h = v / 4, chunk = v % 4;
        const __m256i ql = load32(b.ql + 64 * h + 32 * (chunk % 2));
        const __m256i nib = _mm256_and_si256(_mm256_srli_epi16(ql, 4 * (chunk / 2)), _mm256_set1_epi8(0xF));
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(load32(b.qh + 32 * h), 2 * chunk), _mm256_set1_epi8(3));
        return _mm256_or_si256(nib, _mm256_slli_epi16(high, 4));
    }
};

// vpshufb controls: vector v%4 of a half takes int16 scale 2(v%4) in its lower 128-bit lane and
// 2(v%4)+1 in its upper lane, from a register holding that half's 8 scales in both lanes.
alignas(32) constexpr int8_t kScaleShuffle[4][32] = {
    {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3},
    {4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7},
    {8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11},
    {12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13,
     14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15}};

// Software prefetch this far ahead of the row being read, every cache line of each super-block:
// the hardware prefetcher alone leaves DRAM idle between bursts. 8 KiB measured best on the dev
// machine (a 725 MiB Q6_K GEMV: 1 KiB 0.61, 4 KiB 0.75, 8 KiB 0.77 of the read loop's GB/s).
constexpr int kPrefetchBytes = 8192;

template <typename Block>
inline void prefetch_ahead(const Block* block) {
    const char* p = reinterpret_cast<const char*>(block) + kPrefetchBytes;
    for (size_t line = 0; line < (sizeof(Block) + 63) / 64; ++line) _mm_prefetch(p + 64 * line, _MM_HINT_T0);
}

inline float reduce(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <typename K, int NT>
void row_group_k_n(const void* wv, int64_t n_sb, const void* const* acts, float* sums) {
    const auto* w = static_cast<const typename K::Block*>(wv);
    const ActivationBlockQ8K* a[NT];
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationBlockQ8K*>(acts[t]);
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < n_sb; ++i) {
        prefetch_ahead(w + i);
        const K k(w[i]);
        const __m256i scales_half[2] = {_mm256_permute2x128_si256(k.s, k.s, 0x00),
                                        _mm256_permute2x128_si256(k.s, k.s, 0x11)};
        __m256i dot[NT];
        for (int t = 0; t < NT; ++t) dot[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) {
            const __m256i u = k.weights(v);
            const __m256i sv = _mm256_shuffle_epi8(scales_half[v / 4], load32(kScaleShuffle[v % 4]));
            for (int t = 0; t < NT; ++t) {
                const __m256i p = _mm256_maddubs_epi16(u, _mm256_load_si256(reinterpret_cast<const __m256i*>(a[t][i].qs + 32 * v)));
                dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(p, sv));
            }
        }
        // acc += da * (d * dot - cd * offset), the activation scale broadcast straight from memory
        for (int t = 0; t < NT; ++t) {
            const __m256i offset = _mm256_madd_epi16(k.c, _mm256_load_si256(reinterpret_cast<const __m256i*>(a[t][i].bsums)));
            __m256 f;
            if constexpr (K::kOffsetAtScaleD) {
                f = _mm256_mul_ps(k.d, _mm256_cvtepi32_ps(_mm256_sub_epi32(dot[t], offset)));
            } else {
                f = _mm256_fmsub_ps(k.d, _mm256_cvtepi32_ps(dot[t]), _mm256_mul_ps(k.cd, _mm256_cvtepi32_ps(offset)));
            }
            acc[t] = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&a[t][i].d), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) sums[t] = reduce(acc[t]);
}

template <typename K>
void row_group_k(const void* w, int64_t n_sb, const void* const* acts, int n_tok, float* sums) {
    switch (n_tok) {
        case 1: return row_group_k_n<K, 1>(w, n_sb, acts, sums);
        case 2: return row_group_k_n<K, 2>(w, n_sb, acts, sums);
        case 3: return row_group_k_n<K, 3>(w, n_sb, acts, sums);
        default: return row_group_k_n<K, 4>(w, n_sb, acts, sums);
    }
}

// ---- Q8_0 / Q4_0 against per-32 activations (ActivationGroupQ8) --------------------------------
struct Q8_0W {
    using Block = BlockQ8_0;
    __m256i w, wabs;
    explicit Q8_0W(const Block& b) : w(load32(b.qs)), wabs(_mm256_sign_epi8(w, w)) {}
    // |w| against a with w's sign: unsigned x signed
    __m256i dot(const int8_t* a, int32_t) const {
        const __m256i p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(load32(a), w));
        return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    }
};
struct Q4_0W {
    using Block = BlockQ4_0;
    __m256i u;
    explicit Q4_0W(const Block& b) {
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
        u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0xF));
    }
    // nibbles u = w + 8 as they are; 8 lanes of -sum(a) add up to the -8 * sum(a) correction
    __m256i dot(const int8_t* a, int32_t a_sum) const {
        const __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(u, load32(a)), _mm256_set1_epi16(1));
        return _mm256_sub_epi32(p32, _mm256_set1_epi32(a_sum));
    }
};

template <typename W, int NT>
void row_group_32_n(const void* wv, int64_t n_blocks, const void* const* acts, float* sums) {
    const auto* w = static_cast<const typename W::Block*>(wv);
    const ActivationGroupQ8* a[NT];
    __m256 acc[2][NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationGroupQ8*>(acts[t]);
        acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    }
    auto step = [&](int64_t blk, __m256* acc_t) {
        const W wq(w[blk]);
        const float dw = half_to_float(w[blk].d);
        const int64_t g = blk / 8;
        const int slot = int(blk % 8);
        for (int t = 0; t < NT; ++t)
            acc_t[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wq.dot(a[t][g].qs[slot], a[t][g].sum[slot])),
                                       _mm256_set1_ps(dw * a[t][g].d[slot]), acc_t[t]);
    };
    int64_t b = 0;
    for (; b + 2 <= n_blocks; b += 2) {
        _mm_prefetch(reinterpret_cast<const char*>(w + b) + kPrefetchBytes, _MM_HINT_T0);
        step(b, acc[0]);
        step(b + 1, acc[1]);
    }
    if (b < n_blocks) step(b, acc[0]);
    for (int t = 0; t < NT; ++t) sums[t] = reduce(_mm256_add_ps(acc[0][t], acc[1][t]));
}

template <typename W>
void row_group_32(const void* w, int64_t n_blocks, const void* const* acts, int n_tok, float* sums) {
    switch (n_tok) {
        case 1: return row_group_32_n<W, 1>(w, n_blocks, acts, sums);
        case 2: return row_group_32_n<W, 2>(w, n_blocks, acts, sums);
        case 3: return row_group_32_n<W, 3>(w, n_blocks, acts, sums);
        default: return row_group_32_n<W, 4>(w, n_blocks, acts, sums);
    }
}

// ---- activation quantisers: the scalar ones' arithmetic (quantize_activations.hpp: q = nearest
// even of x * 127 / amax), so every path quantises to the same bytes ----------------------------------------
inline __m256 abs_ps(__m256 v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
inline float reduce_max(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
inline int32_t reduce_add(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}
// d and 1/d by the rules in quantize_activations.hpp; the f16 rounding with F16C
inline float q8_block_scale(float amax, float& inv) {
    inv = q8_inverse_scale(amax);
    return _cvtsh_ss(_cvtss_sh(q8_scale_before_f16(amax), 0));
}
inline float q8k_block_scale(float amax, float& inv) {
    inv = q8_inverse_scale(amax);
    return q8k_scale(inv);
}
// 32 floats times inv, rounded to nearest even, saturated to int8 in order; q[] gets the int32s.
inline __m256i quantize32(const float* x, __m256 inv, __m256i q[4]) {
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), inv));
    // the packs interleave 128-bit lanes: 4-byte groups come out as q0lo q1lo q2lo q3lo q0hi ...
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void quantize_q8(const float* x, ActivationGroupQ8* out, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32) {
        ActivationGroupQ8& g = out[b / 8];
        const int slot = int(b % 8);
        __m256 amax = abs_ps(_mm256_loadu_ps(x));
        for (int i = 1; i < 4; ++i) amax = _mm256_max_ps(amax, abs_ps(_mm256_loadu_ps(x + 8 * i)));
        float inv;
        g.d[slot] = q8_block_scale(reduce_max(amax), inv);
        __m256i q[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(g.qs[slot]), quantize32(x, _mm256_set1_ps(inv), q));
        g.sum[slot] = reduce_add(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    }
    clear_unused_slots(out, n);
}

void quantize_q8k(const float* x, ActivationBlockQ8K* out, int64_t n) {
    for (int64_t b = 0; b < n / 256; ++b, x += 256) {
        __m256 amax = _mm256_setzero_ps();
        for (int i = 0; i < 32; ++i) amax = _mm256_max_ps(amax, abs_ps(_mm256_loadu_ps(x + 8 * i)));
        float inv;
        out[b].d = q8k_block_scale(reduce_max(amax), inv);
        const __m256 scale = _mm256_set1_ps(inv);
        for (int g = 0; g < 8; ++g) {
            __m256i q[4];
            _mm256_store_si256(reinterpret_cast<__m256i*>(out[b].qs + 32 * g), quantize32(x + 32 * g, scale, q));
            out[b].bsums[2 * g] = int16_t(reduce_add(_mm256_add_epi32(q[0], q[1])));
            out[b].bsums[2 * g + 1] = int16_t(reduce_add(_mm256_add_epi32(q[2], q[3])));
        }
        fill_bsums32(out[b]);
    }
}

}  // namespace

const RowGroupTable& avx2_row_groups() {
    static const RowGroupTable table{4, row_group_32<Q8_0W>, row_group_32<Q4_0W>, row_group_k<Q2K>, row_group_k<Q3K>,
                                     row_group_k<Q4K>,    row_group_k<Q5K>,    row_group_k<Q6K>,
                                     quantize_q8, quantize_q8k};
    return table;
}

}  // namespace sluice::cpu::quant_kernels

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
