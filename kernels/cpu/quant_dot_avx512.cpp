// The AVX-512 VNNI path of the fused quantised dots (quant_dot.hpp), on 512-bit vectors: each
// K-quant super-block is four vectors of 64 unsigned weights against 64 activation bytes each;
// products are summed per 4 (vpdpbusd), packed to int16, times the per-16 scales into int32 (vpdpwssd),
// kept in int32 across the super-block and turned to float once per super-block. The offset /
// minimum term comes from the activations' per-16 sums (one vpmaddwd per super-block). See
// quant_dot_scalar.cpp for the decomposition every type is read into. Where a call covers four
// rows (quad_rows, below; what the dispatch uses for K-quants), each 128-bit lane is one of the
// four rows instead, so the scales and the epilogue are paid once for four rows.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/quant_dot_kernels.hpp"
#include "kernels/quant_blocks.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,gfni,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,gfni,avx2,fma,f16c")
#endif

#include "kernels/cpu/transpose_16x16_avx512.hpp"

namespace sluice::cpu::quant_kernels {
namespace {

using namespace sluice::quant;

#include "kernels/cpu/q4k_scales_avx512.inc"

// 32 bytes into both 256-bit halves.
inline __m512i broadcast32(const uint8_t* p) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// Lower half shifted right by lo bits, upper half by hi bits (64-bit lanes: the bits that cross
// into a neighbouring byte are masked off by every caller).
inline __m512i shift_halves(__m512i v, int lo, int hi) {
    return _mm512_srlv_epi64(v, _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo));
}
// A byte in the lower half selects bit lo, in the upper half bit hi.
inline __m512i bit_halves(int lo, int hi) {
    return _mm512_inserti64x4(_mm512_set1_epi8(char(1 << lo)), _mm256_set1_epi8(char(1 << hi)), 1);
}

// Bit fields of every byte, `width` bits from bit `from` (lower 256 bits) / `from_hi` (upper 256
// bits), moved to bit `to`. With GFNI one vgf2p8affineqb does the shift and the mask: its 8x8 bit
// matrix per 64-bit lane has row `to + i` (byte 7 - to - i of the qword) selecting input bit from + i.
constexpr uint64_t bit_select_matrix(int from, int width, int to) {
    uint64_t m = 0;
    for (int i = 0; i < width; ++i) m |= uint64_t(1u << (from + i)) << (8 * (7 - to - i));
    return m;
}
template <bool kGfni>
inline __m512i bit_fields(__m512i x, int from, int from_hi, int width, int to = 0) {
    if constexpr (kGfni) {
        const auto lo = int64_t(bit_select_matrix(from, width, to)), hi = int64_t(bit_select_matrix(from_hi, width, to));
        return _mm512_gf2p8affine_epi64_epi8(x, _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo), 0);
    } else {
        const __m512i field = _mm512_and_si512(shift_halves(x, from, from_hi), _mm512_set1_epi8(char((1 << width) - 1)));
        return to == 0 ? field : _mm512_slli_epi16(field, to);
    }
}

// Q4_K / Q5_K: eight 6-bit (scale, min) pairs in 12 bytes, unpacked with 32-bit word operations
// into scales in bytes 0-7 and mins in bytes 8-15.
inline __m128i k4_scales_mins(const uint8_t* packed) {
    uint32_t w[4];
    std::memcpy(w, packed, 12);
    constexpr uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    w[3] = ((w[2] >> 4) & low4) | (((w[1] >> 6) & low2) << 4);  // mins 4-7
    const uint32_t mins_0_3 = w[1] & low6;
    w[1] = (w[2] & low4) | (((w[0] >> 6) & low2) << 4);  // scales 4-7
    w[2] = mins_0_3;
    w[0] &= low6;  // scales 0-3
    // from registers: a 16-byte load of the four 4-byte stores would miss store forwarding
    return _mm_setr_epi32(int(w[0]), int(w[1]), int(w[2]), int(w[3]));
}
// Each of 8 bytes twice, widened to 16 int16: one entry per 16 elements.
inline __m256i per16_from_per32(__m128i bytes8) { return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(bytes8, bytes8)); }

// The f16 pair (d, dmin) at p as two all-lane float vectors; the single d of Q3_K / Q6_K as one.
inline void half_pair(const uint16_t* p, __m512& d, __m512& dmin) {
    uint32_t both;
    std::memcpy(&both, p, 4);
    const __m512 pairs = _mm512_cvtph_ps(_mm256_set1_epi32(int(both)));  // d, dmin, d, dmin, ...
    d = _mm512_permute_ps(pairs, 0x00);
    dmin = _mm512_permute_ps(pairs, 0x55);
}
inline __m512 half_all(uint16_t h) { return _mm512_cvtph_ps(_mm256_set1_epi16(short(h))); }

template <bool kGfni>
struct Q2K {
    using Block = BlockQ2_K;
    static constexpr bool kOffsetAtScaleD = false;
    const Block& b;
    __m256i s, c;
    __m512 d, cd;
    explicit Q2K(const Block& blk) : b(blk) {
        const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
        s = _mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0xF)));
        c = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0xF)));
        half_pair(&b.d, d, cd);
    }
    // elements 64v..64v+63: 2-bit fields 2(v%2) and 2(v%2)+1 of qs[32(v/2) ..]
    __m512i weights(int v) const {
        const int shift = 4 * (v % 2);
        return bit_fields<kGfni>(broadcast32(b.qs + 32 * (v / 2)), shift, shift + 2, 2);
    }
};

// Q3_K: the sixteen 6-bit scales of 12 packed bytes, as int8 in [-32, 31].
inline __m128i q3k_scales(const uint8_t* packed) {
    // read as 8 + 4 bytes (a 16-byte read could pass the end of the last block)
    uint64_t lo8;
    uint32_t hi4;
    std::memcpy(&lo8, packed, 8);
    std::memcpy(&hi4, packed + 8, 4);
    const __m128i p = _mm_insert_epi32(_mm_cvtsi64_si128(int64_t(lo8)), int(hi4), 2);
    const __m128i low4 = _mm_set1_epi8(0xF);
    const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(p, low4), _mm_and_si128(_mm_srli_epi16(p, 4), low4));
    // scale i takes bits 2(i/4), 2(i/4)+1 of byte 8 + i%4: bytes 8-11 repeated per 32-bit lane,
    // lane j shifted by 2j
    __m128i high = _mm_shuffle_epi8(p, _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11));
    high = _mm_and_si128(_mm_srlv_epi32(high, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), _mm_set1_epi8(32));
}

template <bool kGfni>
struct Q3K {
    using Block = BlockQ3_K;
    static constexpr bool kOffsetAtScaleD = true;
    const Block& b;
    __m256i s, c;
    __m512i hmask;
    __m512 d, cd;
    explicit Q3K(const Block& blk) : b(blk) {
        s = _mm256_cvtepi8_epi16(q3k_scales(b.scales));
        c = _mm256_slli_epi16(s, 2);
        hmask = broadcast32(b.hmask);
        d = cd = half_all(b.d);
    }
    // as Q2_K, plus 4 where the hmask bit 4(v/2)+2(v%2) (+1 for the upper half) is set
    __m512i weights(int v) const {
        const int shift = 4 * (v % 2), bit = 4 * (v / 2) + 2 * (v % 2);
        const __m512i q2 = bit_fields<kGfni>(broadcast32(b.qs + 32 * (v / 2)), shift, shift + 2, 2);
        const __mmask64 high = _mm512_test_epi8_mask(hmask, bit_halves(bit, bit + 1));
        return _mm512_mask_add_epi8(q2, high, q2, _mm512_set1_epi8(4));
    }
};

template <bool kGfni>
struct Q4K {
    using Block = BlockQ4_K;
    static constexpr bool kOffsetAtScaleD = false;
    const Block& b;
    __m256i s, c;
    __m512 d, cd;
    explicit Q4K(const Block& blk) : b(blk) {
        const __m128i sm = k4_scales_mins(b.scales);
        s = per16_from_per32(sm);
        c = per16_from_per32(_mm_unpackhi_epi64(sm, sm));
        half_pair(&b.d, d, cd);
    }
    // elements 64v..64v+63: low then high nibbles of qs[32v ..]
    __m512i weights(int v) const { return bit_fields<kGfni>(broadcast32(b.qs + 32 * v), 0, 4, 4); }
};

template <bool kGfni>
struct Q5K {
    using Block = BlockQ5_K;
    static constexpr bool kOffsetAtScaleD = false;
    const Block& b;
    __m256i s, c;
    __m512i qh;
    __m512 d, cd;
    explicit Q5K(const Block& blk) : b(blk) {
        const __m128i sm = k4_scales_mins(b.scales);
        s = per16_from_per32(sm);
        c = per16_from_per32(_mm_unpackhi_epi64(sm, sm));
        qh = broadcast32(b.qh);
        half_pair(&b.d, d, cd);
    }
    // Q4_K's nibbles plus 16 where bit 2v (2v+1 for the upper half) of qh is set
    __m512i weights(int v) const {
        const __m512i q4 = bit_fields<kGfni>(broadcast32(b.qs + 32 * v), 0, 4, 4);
        const __mmask64 high = _mm512_test_epi8_mask(qh, bit_halves(2 * v, 2 * v + 1));
        return _mm512_mask_add_epi8(q4, high, q4, _mm512_set1_epi8(16));
    }
};

template <bool kGfni>
struct Q6K {
    using Block = BlockQ6_K;
    static constexpr bool kOffsetAtScaleD = true;
    const Block& b;
    __m256i s, c;
    __m512 d, cd;
    explicit Q6K(const Block& blk) : b(blk) {
        s = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)));
        c = _mm256_slli_epi16(s, 5);
        d = cd = half_all(b.d);
    }
    // elements 64v..64v+63: nibbles (low for even v, high for odd) of ql[64(v/2) .. +64], with
    // 2-bit fields 2(v%2)*2 and +2 of qh[32(v/2) ..] as bits 4-5
    __m512i weights(int v) const {
        const __m512i ql = _mm512_loadu_si512(b.ql + 64 * (v / 2));
        const int nib = 4 * (v % 2), shift = 4 * (v % 2);
        const __m512i high = bit_fields<kGfni>(broadcast32(b.qh + 32 * (v / 2)), shift, shift + 2, 2, 4);
        return _mm512_or_si512(bit_fields<kGfni>(ql, nib, nib, 4), high);
    }
};

// Vectors 2q and 2q+1 of a super-block go through vpdpbusd into int32 per 4 elements (at most
// 4 * 63 * 127 in magnitude, so exact in int16), are packed to int16 together (per 128-bit lane:
// four from vector 2q, then four from 2q+1) and meet their scales in one vpdpwssd. int16 lane j of
// pair q takes the scale of sub-block 4 * (2q + (j % 8) / 4) + j / 8: each 128-bit lane of a
// vector is one 16-element sub-block. Three multiply instructions per 128 elements and token
// instead of four (vpmaddubsw + vpdpwssd per vector).
alignas(64) constexpr int16_t kPairScaleIndex16[2][32] = {
    {0, 0, 0, 0, 4, 4, 4, 4, 1, 1, 1, 1, 5, 5, 5, 5, 2, 2, 2, 2, 6, 6, 6, 6, 3, 3, 3, 3, 7, 7, 7, 7},
    {8, 8, 8, 8, 12, 12, 12, 12, 9, 9, 9, 9, 13, 13, 13, 13, 10, 10, 10, 10, 14, 14, 14, 14, 11, 11, 11, 11, 15, 15, 15, 15}};

// Software prefetch this far ahead of the row being read, every cache line of each super-block:
// the hardware prefetcher alone leaves DRAM idle between bursts. 8 KiB measured best on the dev
// machine (a 725 MiB Q6_K GEMV: 1 KiB 0.61, 4 KiB 0.75, 8 KiB 0.77 of the read loop's GB/s).
constexpr int kPrefetchBytes = 8192;

// Every cache line of the kBytes starting at `at`, kPrefetchBytes further on.
template <size_t kBytes>
inline void prefetch_ahead(const void* at) {
    const char* p = static_cast<const char*>(at) + kPrefetchBytes;
    for (size_t line = 0; line < (kBytes + 63) / 64; ++line) _mm_prefetch(p + 64 * line, _MM_HINT_T0);
}

template <typename K, int NT>
void row_group_k_n(const void* wv, int64_t n_sb, const void* const* acts, float* sums) {
    const auto* w = static_cast<const typename K::Block*>(wv);
    const ActivationBlockQ8K* a[NT];
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationBlockQ8K*>(acts[t]);
        acc[t] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < n_sb; ++i) {
        prefetch_ahead<sizeof(typename K::Block)>(w + i);
        const K k(w[i]);
        const __m512i scales = _mm512_castsi256_si512(k.s);  // indices stay below 16
        __m512i dot[NT];
        for (int t = 0; t < NT; ++t) dot[t] = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int q = 0; q < 2; ++q) {
            const __m512i u0 = k.weights(2 * q), u1 = k.weights(2 * q + 1);
            const __m512i sv = _mm512_permutexvar_epi16(_mm512_load_si512(kPairScaleIndex16[q]), scales);
            for (int t = 0; t < NT; ++t) {
                const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u0, _mm512_load_si512(a[t][i].qs + 128 * q));
                const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u1, _mm512_load_si512(a[t][i].qs + 128 * q + 64));
                dot[t] = _mm512_dpwssd_epi32(dot[t], _mm512_packs_epi32(d0, d1), sv);  // += pairs of int16 * scale
            }
        }
        // acc += da * (d * dot - cd * offset), the activation scale broadcast straight from memory
        for (int t = 0; t < NT; ++t) {
            const __m256i offset = _mm256_madd_epi16(k.c, _mm256_load_si256(reinterpret_cast<const __m256i*>(a[t][i].bsums)));
            __m512 f;
            if constexpr (K::kOffsetAtScaleD) {
                // Q6_K's offset (32 sum sc a) is a storage artefact: the integer dot of q itself,
                // summed over the lanes before it becomes a float, is exact; a float per lane
                // cancelled (rows of q = 32 came out nonzero), lane 0 carries the super-block.
                const int32_t exact = _mm512_reduce_add_epi32(_mm512_sub_epi32(dot[t], _mm512_zextsi256_si512(offset)));
                f = _mm512_maskz_mov_ps(1, _mm512_mul_ps(k.d, _mm512_set1_ps(float(exact))));
            } else {
                const __m512 off = _mm512_mul_ps(k.cd, _mm512_cvtepi32_ps(_mm512_zextsi256_si512(offset)));
                f = _mm512_fmsub_ps(k.d, _mm512_cvtepi32_ps(dot[t]), off);
            }
            acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(a[t][i].d), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) sums[t] = _mm512_reduce_add_ps(acc[t]);
}

template <typename K>
void row_group_k(const void* w, int64_t n_sb, const void* const* acts, int n_tok, float* sums) {
    switch (n_tok) {
        case 1: return row_group_k_n<K, 1>(w, n_sb, acts, sums);
        case 2: return row_group_k_n<K, 2>(w, n_sb, acts, sums);
        case 3: return row_group_k_n<K, 3>(w, n_sb, acts, sums);
        case 4: return row_group_k_n<K, 4>(w, n_sb, acts, sums);
        case 5: return row_group_k_n<K, 5>(w, n_sb, acts, sums);
        case 6: return row_group_k_n<K, 6>(w, n_sb, acts, sums);
        case 7: return row_group_k_n<K, 7>(w, n_sb, acts, sums);
        default: return row_group_k_n<K, 8>(w, n_sb, acts, sums);
    }
}

// ---- K-quants, four rows at a time -----------------------------------------------------------
// One row at a time (row_group_k), every token pays for the row's scales: two packs + two
// vpdpwssd per 256 weights and a float epilogue with its own minimum term per super-block, beside
// four vpdpbusd. Here 128-bit lane r of every vector holds row r of four neighbouring rows,
// straight from the GGUF blocks (16-byte pieces of each row's block, no repacking): one vpdpbusd
// covers 16 weights of each of the four rows against the same 16 activation bytes broadcast to
// every lane; one pack + one vpdpwssd applies two sub-blocks' scales to all four rows at once; the
// epilogue (minimum / offset term, d, dmin, the activation scale) is one per super-block for the
// four. bench_gemv --gemm --type Q4_K, 2048x7168 from DRAM, 2 threads: 16 tokens 252 -> 424
// GFLOP/s, 64 tokens 267 -> 465.
//
// A type's side (QuadQ2K .. QuadQ6K), for one super-block of the four rows (b[r] its block in row r):
//   weights(b, g, w): the 8 vectors of unsigned weights of elements 128g + 16k .. + 15 (k = 0..7);
//   scales: per lane, the sub-block scales as int8 (16 of 16 elements, or 8 of 32 in bytes 0-7);
//   offsets: per lane, the int8 coefficients c of the offset / minimum term, whose int16 value is
//     (byte << 8) >> kOffsetShift (8: c itself, 6: 4c, 3: 32c), at bytes 8-15 for 32-element
//     sub-blocks (one per sub-block) or 0-15 for 16-element ones;
//   d, dmin: the row's float scales, each in its four lanes.
// Partial sums before the scales stay exact in int16: a 32-element sub-block is two chained
// vpdpbusd (eight products per int32 of at most 31 * 127), a 16-element one a single vpdpbusd
// (four of at most 63 * 127).

// 16 bytes at p[0..3] + offset, one per 128-bit lane
inline __m512i lanes4(const uint8_t* const* p, int64_t offset) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[0] + offset)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[1] + offset)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[2] + offset)), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[3] + offset)), 3);
}
inline __m512i broadcast16(const void* p) { return _mm512_broadcast_i32x4(_mm_loadu_si128(static_cast<const __m128i*>(p))); }

// Each row's f16 at int16 index `at` of its lane (loaded by lanes4), as float in the row's four lanes.
inline __m512 lane_halves(__m512i v, int at) {
    const __m512i index = _mm512_add_epi16(
        _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 24, 24, 24, 16, 16, 16, 16, 8, 8, 8, 8, 0, 0, 0, 0),
        _mm512_set1_epi16(short(at)));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(index, v)));
}

// pshufb controls (the same in every lane) that put int8 bytes into the high byte of int16s
struct QuadShuffles {
    __m512i scale_pair[8];  // int16 x 4 of scale 2v, then x 4 of scale 2v + 1
    __m512i offset32[2];    // (c_j, c_j) for j = 4h .. 4h + 3, c at bytes 8-15: against per-16 sums
    __m512i offset16[2];    // (c_2p, c_2p+1) for 2p = 8h .. 8h + 6
    QuadShuffles() {
        alignas(16) int8_t b[16];
        auto control = [&](auto byte_of) {
            for (int k = 0; k < 8; ++k) {
                b[2 * k] = int8_t(0x80);  // low byte zero
                b[2 * k + 1] = int8_t(byte_of(k));
            }
            return broadcast16(b);
        };
        for (int v = 0; v < 8; ++v) scale_pair[v] = control([v](int k) { return 2 * v + k / 4; });
        for (int h = 0; h < 2; ++h) {
            offset32[h] = control([h](int k) { return 8 + 4 * h + k / 2; });
            offset16[h] = control([h](int k) { return 8 * h + k; });
        }
    }
};
inline __m512i int16_from_high_bytes(__m512i bytes, __m512i control, int shift) {
    return _mm512_srai_epi16(_mm512_shuffle_epi8(bytes, control), shift);
}

template <bool kGfni>
struct QuadQ4K {
    static constexpr int kBlockBytes = sizeof(BlockQ4_K), kSubBlock = 32, kOffsetShift = 8;
    static constexpr bool kOffsetAtScaleD = false;
    __m512i scales, offsets;
    __m512 d, dmin;
    explicit QuadQ4K(const uint8_t* const* b) {
        // The first 16 bytes of a block: d, dmin, then the 12 packed 6-bit scales and minimums.
        const __m512i head = lanes4(b, 0);
        scales = offsets = q4k_lane_scales_mins(head);  // per lane: scales 0-7, minimums 0-7
        d = lane_halves(head, 0);
        dmin = lane_halves(head, 1);
    }
    // qs piece c (16 bytes; v = c / 2): low nibbles are elements 64v + 16(c % 2), high nibbles 32 on
    static void nibbles(const uint8_t* const* b, int64_t qs, int g, __m512i* w, bool high_bits, __m512i qh0, __m512i qh1) {
        for (int k = 0; k < 4; ++k) {
            const int c = 4 * g + k, v = c / 2, slot = 4 * (k / 2) + k % 2;
            const __m512i packed = lanes4(b, qs + 16 * c);
            w[slot] = bit_fields<kGfni>(packed, 0, 0, 4);
            w[slot + 2] = bit_fields<kGfni>(packed, 4, 4, 4);
            if (high_bits) {  // Q5_K: bit 2v (2v + 1 for the high nibbles) of qh[16(c % 2) ..] as 16
                const __m512i qh = k % 2 ? qh1 : qh0;
                w[slot] = _mm512_or_si512(w[slot], bit_fields<kGfni>(qh, 2 * v, 2 * v, 1, 4));
                w[slot + 2] = _mm512_or_si512(w[slot + 2], bit_fields<kGfni>(qh, 2 * v + 1, 2 * v + 1, 1, 4));
            }
        }
    }
    void weights(const uint8_t* const* b, int g, __m512i* w) const {
        nibbles(b, offsetof(BlockQ4_K, qs), g, w, false, _mm512_setzero_si512(), _mm512_setzero_si512());
    }
};

template <bool kGfni>
struct QuadQ5K : QuadQ4K<kGfni> {  // Q4_K's header and nibbles, plus a fifth bit from qh
    static constexpr int kBlockBytes = sizeof(BlockQ5_K);
    __m512i qh0, qh1;  // read once, used by both groups
    explicit QuadQ5K(const uint8_t* const* b)
        : QuadQ4K<kGfni>(b), qh0(lanes4(b, offsetof(BlockQ5_K, qh))), qh1(lanes4(b, offsetof(BlockQ5_K, qh) + 16)) {}
    void weights(const uint8_t* const* b, int g, __m512i* w) const {
        QuadQ4K<kGfni>::nibbles(b, offsetof(BlockQ5_K, qs), g, w, true, qh0, qh1);
    }
};

template <bool kGfni>
struct QuadQ6K {
    static constexpr int kBlockBytes = sizeof(BlockQ6_K), kSubBlock = 16, kOffsetShift = 3;  // offset 32 s
    static constexpr bool kOffsetAtScaleD = true;
    __m512i scales, offsets;
    __m512 d, dmin;
    explicit QuadQ6K(const uint8_t* const* b) {
        scales = offsets = lanes4(b, offsetof(BlockQ6_K, scales));
        d = dmin = lane_halves(lanes4(b, kBlockBytes - 16), 7);  // d ends the block
    }
    // Elements 128g + l (l < 64): the low nibble of ql[64g + l]; 128g + 64 + l: its high nibble.
    // Bits 4-5 from qh[32g + l % 32]: bits 0-1 (l < 32) or 2-3, and 4-5 or 6-7 for the high nibbles.
    void weights(const uint8_t* const* b, int g, __m512i* w) const {
        const int64_t ql = offsetof(BlockQ6_K, ql) + 64 * g, qh = offsetof(BlockQ6_K, qh) + 32 * g;
        const __m512i qh0 = lanes4(b, qh), qh1 = lanes4(b, qh + 16);
        for (int m = 0; m < 4; ++m) {
            const __m512i packed = lanes4(b, ql + 16 * m), h = m % 2 ? qh1 : qh0;
            const int shift = 2 * (m / 2);
            w[m] = _mm512_or_si512(bit_fields<kGfni>(packed, 0, 0, 4), bit_fields<kGfni>(h, shift, shift, 2, 4));
            w[m + 4] = _mm512_or_si512(bit_fields<kGfni>(packed, 4, 4, 4), bit_fields<kGfni>(h, shift + 4, shift + 4, 2, 4));
        }
    }
};

template <bool kGfni>
struct QuadQ2K {
    static constexpr int kBlockBytes = sizeof(BlockQ2_K), kSubBlock = 16, kOffsetShift = 8;
    static constexpr bool kOffsetAtScaleD = false;
    __m512i scales, offsets;
    __m512 d, dmin;
    explicit QuadQ2K(const uint8_t* const* b) {
        const __m512i packed = lanes4(b, offsetof(BlockQ2_K, scales));  // scale | minimum << 4
        scales = _mm512_and_si512(packed, _mm512_set1_epi8(0xF));
        offsets = _mm512_and_si512(_mm512_srli_epi16(packed, 4), _mm512_set1_epi8(0xF));
        const __m512i tail = lanes4(b, kBlockBytes - 16);  // d, dmin end the block
        d = lane_halves(tail, 6);
        dmin = lane_halves(tail, 7);
    }
    // Elements 128g + 32j + 16h + i: bits 2j, 2j + 1 of qs[32g + 16h + i]
    void weights(const uint8_t* const* b, int g, __m512i* w) const {
        for (int h = 0; h < 2; ++h) {
            const __m512i packed = lanes4(b, offsetof(BlockQ2_K, qs) + 32 * g + 16 * h);
            for (int j = 0; j < 4; ++j) w[2 * j + h] = bit_fields<kGfni>(packed, 2 * j, 2 * j, 2);
        }
    }
};

template <bool kGfni>
struct QuadQ3K {
    static constexpr int kBlockBytes = sizeof(BlockQ3_K), kSubBlock = 16, kOffsetShift = 6;  // offset 4 s
    static constexpr bool kOffsetAtScaleD = true;
    __m512i scales, offsets;
    __m512 d, dmin;
    __m512i hmask[2];  // read once, used by both groups
    explicit QuadQ3K(const uint8_t* const* b) {
        hmask[0] = lanes4(b, offsetof(BlockQ3_K, hmask));
        hmask[1] = lanes4(b, offsetof(BlockQ3_K, hmask) + 16);
        __m512i s = _mm512_castsi128_si512(q3k_scales(b[0] + offsetof(BlockQ3_K, scales)));
        s = _mm512_inserti32x4(s, q3k_scales(b[1] + offsetof(BlockQ3_K, scales)), 1);
        s = _mm512_inserti32x4(s, q3k_scales(b[2] + offsetof(BlockQ3_K, scales)), 2);
        scales = offsets = _mm512_inserti32x4(s, q3k_scales(b[3] + offsetof(BlockQ3_K, scales)), 3);
        d = dmin = lane_halves(lanes4(b, kBlockBytes - 16), 7);  // d ends the block
    }
    // Q2_K's fields from qs, plus 4 where bit 4g + j of hmask[16h + i] is set
    void weights(const uint8_t* const* b, int g, __m512i* w) const {
        for (int h = 0; h < 2; ++h) {
            const __m512i packed = lanes4(b, offsetof(BlockQ3_K, qs) + 32 * g + 16 * h);
            for (int j = 0; j < 4; ++j)
                w[2 * j + h] = _mm512_or_si512(bit_fields<kGfni>(packed, 2 * j, 2 * j, 2),
                                               bit_fields<kGfni>(hmask[h], 4 * g + j, 4 * g + j, 1, 2));
        }
    }
};

// kRowSums: each row's four int32 lanes (the dot, and the offset) are added up before the float
// epilogue, so the float steps per row and token are the AMX kernel's (quant_dot_amx.cpp), bit
// for bit: f = d * float(dot) - dmin * float(offset) (Q4_K), f = d * float(dot - offset) (Q6_K),
// total += f * da.
inline __m512i row_sums(__m512i v) {
    v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
    return _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
}

template <typename Q, int NT, bool kRowSums = false>
void quad_rows_n(const void* wv, int64_t row_bytes, int64_t n_sb, const void* const* acts, float* sums) {
    static const QuadShuffles shuffles;
    const auto* row0 = static_cast<const uint8_t*>(wv);
    const ActivationBlockQ8K* a[NT];
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationBlockQ8K*>(acts[t]);
        acc[t] = _mm512_setzero_ps();
    }
    const __m512i z = _mm512_setzero_si512();
    for (int64_t i = 0; i < n_sb; ++i) {
        const uint8_t* b[4];
        for (int r = 0; r < 4; ++r) {
            b[r] = row0 + r * row_bytes + i * int64_t(Q::kBlockBytes);
            prefetch_ahead<Q::kBlockBytes>(b[r]);
        }
        const Q q(b);
        __m512i dot[NT];
        for (int t = 0; t < NT; ++t) dot[t] = z;
        // Two groups of 128 elements per row: eight weight vectors, in element order, each 16
        // elements of the four rows against 16 activation bytes.
#pragma GCC unroll 2
        for (int g = 0; g < 2; ++g) {
            __m512i w[8];
            q.weights(b, g, w);
            if constexpr (Q::kSubBlock == 32) {
                const __m512i sc0 = int16_from_high_bytes(q.scales, shuffles.scale_pair[2 * g], 8);
                const __m512i sc1 = int16_from_high_bytes(q.scales, shuffles.scale_pair[2 * g + 1], 8);
                for (int t = 0; t < NT; ++t) {
                    const int8_t* x = a[t][i].qs + 128 * g;
                    __m512i s[4];
                    for (int k = 0; k < 4; ++k)
                        s[k] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, w[2 * k], broadcast16(x + 32 * k)), w[2 * k + 1],
                                                   broadcast16(x + 32 * k + 16));
                    dot[t] = _mm512_dpwssd_epi32(dot[t], _mm512_packs_epi32(s[0], s[1]), sc0);
                    dot[t] = _mm512_dpwssd_epi32(dot[t], _mm512_packs_epi32(s[2], s[3]), sc1);
                }
            } else {
                __m512i sc[4];
                for (int p = 0; p < 4; ++p) sc[p] = int16_from_high_bytes(q.scales, shuffles.scale_pair[4 * g + p], 8);
                for (int t = 0; t < NT; ++t) {
                    const int8_t* x = a[t][i].qs + 128 * g;
                    for (int p = 0; p < 4; ++p) {
                        const __m512i s0 = _mm512_dpbusd_epi32(z, w[2 * p], broadcast16(x + 32 * p));
                        const __m512i s1 = _mm512_dpbusd_epi32(z, w[2 * p + 1], broadcast16(x + 32 * p + 16));
                        dot[t] = _mm512_dpwssd_epi32(dot[t], _mm512_packs_epi32(s0, s1), sc[p]);
                    }
                }
            }
        }
        // offset / minimum term against the activations' per-16 sums, eight of them per vpdpwssd
        const __m512i* control = Q::kSubBlock == 32 ? shuffles.offset32 : shuffles.offset16;
        const __m512i c0 = int16_from_high_bytes(q.offsets, control[0], Q::kOffsetShift);
        const __m512i c1 = int16_from_high_bytes(q.offsets, control[1], Q::kOffsetShift);
        for (int t = 0; t < NT; ++t) {
            const __m512i offset =
                _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(z, c0, broadcast16(a[t][i].bsums)), c1, broadcast16(a[t][i].bsums + 8));
            __m512 f;
            if constexpr (kRowSums && Q::kOffsetAtScaleD) {
                f = _mm512_mul_ps(q.d, _mm512_cvtepi32_ps(row_sums(_mm512_sub_epi32(dot[t], offset))));
            } else if constexpr (kRowSums) {
                f = _mm512_fmsub_ps(q.d, _mm512_cvtepi32_ps(row_sums(dot[t])), _mm512_mul_ps(q.dmin, _mm512_cvtepi32_ps(row_sums(offset))));
            } else if constexpr (Q::kOffsetAtScaleD) {
                f = _mm512_mul_ps(q.d, _mm512_cvtepi32_ps(_mm512_sub_epi32(dot[t], offset)));
            } else {
                f = _mm512_fmsub_ps(q.d, _mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(q.dmin, _mm512_cvtepi32_ps(offset)));
            }
            acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(a[t][i].d), acc[t]);
        }
    }
    // each row's four lanes summed (already one sum in each lane with kRowSums): sums[4t + r]
    for (int t = 0; t < NT; ++t) {
        __m512 x = acc[t];
        if constexpr (!kRowSums) {
            x = _mm512_add_ps(x, _mm512_permute_ps(x, 0x4e));
            x = _mm512_add_ps(x, _mm512_permute_ps(x, 0xb1));
        }
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, x);
        for (int r = 0; r < 4; ++r) sums[4 * t + r] = lanes[4 * r];
    }
}

template <typename Q, bool kRowSums = false>
void quad_rows(const void* w, int64_t row_bytes, int64_t n_sb, const void* const* acts, int n_tok, float* sums) {
    switch (n_tok) {
        case 1: return quad_rows_n<Q, 1, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 2: return quad_rows_n<Q, 2, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 3: return quad_rows_n<Q, 3, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 4: return quad_rows_n<Q, 4, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 5: return quad_rows_n<Q, 5, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 6: return quad_rows_n<Q, 6, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 7: return quad_rows_n<Q, 7, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 8: return quad_rows_n<Q, 8, kRowSums>(w, row_bytes, n_sb, acts, sums);
        case 16: return quad_rows_n<Q, 16, kRowSums>(w, row_bytes, n_sb, acts, sums);
        default:  // 9-15: each token's arithmetic is the same whatever the call's width
            quad_rows_n<Q, 8, kRowSums>(w, row_bytes, n_sb, acts, sums);
            return quad_rows<Q, kRowSums>(w, row_bytes, n_sb, acts + 8, n_tok - 8, sums + 32);
    }
}

// ---- Q4_K, sixteen rows at a time from a repacked tile ------------------------------------------
// Four rows per call (above) keep each row in a 128-bit lane, so a lane's four int32 hold partial
// sums of one sub-block: every token then pays two packs and two vpdpwssd per 64 elements to apply
// the sub-block scales and sum the lane, a zero-initialised accumulator per 32 elements, and a
// 128-bit activation broadcast per vpdpbusd. On Zen 4 (no AMX) that kernel ran ~40 cycles per token
// x 4 rows x 256 elements against 16 for its vpdpbusd alone. Here each 32-bit lane of a vector is
// one of 16 rows and holds four weights at the same four positions of every row, so one vpdpbusd
// against those four activation bytes (a dword broadcast folded into the instruction) adds to one
// int32 per row, and eight of them are a whole sub-block's exact integer dot. The sub-block scale
// is then applied in float, per row and sub-block: f = sum_j float(S_j) (d sc_j), the minimum
// term dmin sum_j m_j (bsum_2j + bsum_2j+1) from integer vpdpwssd, two sub-blocks an instruction
// (the activations carry the per-32 sums, bsums32), f * da added per super-block.
// Measured in a kernel harness on Zen 4: ~21 cycles per token x 4 rows x 256 (1.9x).
//
// The rows must be turned into that layout first: one 16 x 16 transpose of 32-bit words per 64
// bytes of qs, and the scales unpacked to float, once per tile and call (repack_16_q4k), which the
// tile's tokens share. A call is still one token's arithmetic whatever the tokens beside it, so a
// token's bits never depend on the batch.
// Q5_K is Q4_K with a fifth bit per weight from qh (bit 2v of qh[l] for element 64v + l, bit 2v + 1
// for 64v + 32 + l), or-ed into the nibbles at bit 4.
struct Packed16Q4K {         // one super-block of 16 rows
    uint32_t qs[32][16];     // [c][r]: bytes 4c .. 4c + 3 of row r's qs: elements 64v + 4k .. + 3 in
                             // the low nibbles, 64v + 32 + 4k .. in the high ones (c = 8v + k)
    float ds[8][16];         // d * scale_j
    int32_t mins[4][16];     // (m_2i, m_2i+1) as two int16, against the activations' word i of bsums32
    float dmin[16];
    uint32_t qh[8][16];      // Q5_K: [k][r]: qh bytes 4k .. 4k + 3 of row r
};
static_assert(sizeof(Packed16Q4K) <= sizeof(PackedBlock16));


// 16 bytes at offset `at` of each of 16 rows, as four vectors of each row's word e (lane order = rows).
inline void row_words_4(const uint8_t* b, int64_t row_bytes, int64_t at, __m512i words[4]) {
    const __m512i rows_order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i h[4];
    for (int g = 0; g < 4; ++g) {
        const uint8_t* row = b + 4 * g * row_bytes + at;
        h[g] = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
        for (int k = 1; k < 4; ++k)
            h[g] = _mm512_inserti32x4(h[g], _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * row_bytes)), k);
    }
    // Row 4g + k of h[g] lands at word 4k + g after the two unpack stages; rows_order puts it at r.
    const __m512i a0 = _mm512_unpacklo_epi32(h[0], h[1]), a1 = _mm512_unpackhi_epi32(h[0], h[1]);
    const __m512i b0 = _mm512_unpacklo_epi32(h[2], h[3]), b1 = _mm512_unpackhi_epi32(h[2], h[3]);
    words[0] = _mm512_permutexvar_epi32(rows_order, _mm512_unpacklo_epi64(a0, b0));
    words[1] = _mm512_permutexvar_epi32(rows_order, _mm512_unpackhi_epi64(a0, b0));
    words[2] = _mm512_permutexvar_epi32(rows_order, _mm512_unpacklo_epi64(a1, b1));
    words[3] = _mm512_permutexvar_epi32(rows_order, _mm512_unpackhi_epi64(a1, b1));
}

// `bytes` bytes (a multiple of 64) at offset `at` of 16 rows into words[c][r].
inline void transpose_rows_16(const uint8_t* b, int64_t row_bytes, int64_t at, int bytes, uint32_t (*words)[16]) {
    for (int part = 0; part < bytes / 64; ++part) {
        __m512i r[16];
        for (int row = 0; row < 16; ++row) r[row] = _mm512_loadu_si512(b + row * row_bytes + at + 64 * part);
        transpose_16x16_words(r);
        for (int c = 0; c < 16; ++c) _mm512_store_si512(words[16 * part + c], r[c]);
    }
}

// Block i of n's share of the prefetch: lines [lines i / n, lines (i + 1) / n), into L2.
inline void prefetch_share(const PrefetchLines& p, int64_t i, int64_t n) {
    for (int64_t l = p.lines * i / n, end = p.lines * (i + 1) / n; l < end; ++l)
        _mm_prefetch(reinterpret_cast<const char*>(p.first + 64 * l), _MM_HINT_T1);
}

// Signed byte `k` of every 32-bit lane, as int32.
inline __m512i signed_byte(__m512i w, int k) { return _mm512_srai_epi32(_mm512_slli_epi32(w, 24 - 8 * k), 24); }

template <bool kQ5>
void repack_16_q4k(const void* wv, int64_t row_bytes, int64_t n_blocks, PackedBlock16* packed) {
    using Block = std::conditional_t<kQ5, BlockQ5_K, BlockQ4_K>;
    const auto* w = static_cast<const uint8_t*>(wv);
    const __m512i low6 = _mm512_set1_epi32(0x3f3f3f3f), low4 = _mm512_set1_epi32(0x0f0f0f0f),
                  low2 = _mm512_set1_epi32(0x03030303), byte = _mm512_set1_epi32(0xff);
    for (int64_t i = 0; i < n_blocks; ++i) {
        auto& p = *reinterpret_cast<Packed16Q4K*>(packed + i);
        const uint8_t* b = w + i * int64_t(sizeof(Block));
        transpose_rows_16(b, row_bytes, offsetof(Block, qs), 128, p.qs);
        if constexpr (kQ5) {  // qh's 32 bytes and the 32 after them (qs), keeping qh's 8 words
            alignas(64) uint32_t words[16][16];
            transpose_rows_16(b, row_bytes, offsetof(BlockQ5_K, qh), 64, words);
            std::memcpy(p.qh, words, sizeof p.qh);
        }
        // The 16-byte heads: d and dmin, then 12 bytes of 6-bit scales and minimums.
        __m512i words[4];
        row_words_4(b, row_bytes, 0, words);
        const __m512i head = words[0], w0 = words[1], w1 = words[2], w2 = words[3];
        // k4_scales_mins' unpacking, on every row's words at once
        const __m512i scales03 = _mm512_and_si512(w0, low6), mins03 = _mm512_and_si512(w1, low6);
        const __m512i scales47 = _mm512_or_si512(_mm512_and_si512(w2, low4),
                                                 _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(w0, 6), low2), 4));
        const __m512i mins47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, 4), low4),
                                               _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(w1, 6), low2), 4));
        const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
        _mm512_store_ps(p.dmin, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16))));
        for (int j = 0; j < 8; ++j) {
            const int shift = 8 * (j % 4);
            const __m512i sc = _mm512_and_si512(_mm512_srli_epi32(j < 4 ? scales03 : scales47, shift), byte);
            _mm512_store_ps(p.ds[j], _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc)));  // exact: 11 x 6 bits
        }
        // Bytes 0, 1 and 2, 3 of each word of minimums as int16 pairs (all 6-bit, so no sign).
        const __m512i pair_bytes = _mm512_set1_epi32(0x00ff00ff);
        for (int i = 0; i < 4; ++i) {
            const __m512i m = i < 2 ? mins03 : mins47;
            const __m512i pairs = _mm512_and_si512(_mm512_srli_epi32(m, 16 * (i % 2)), _mm512_set1_epi32(0xffff));
            _mm512_store_si512(p.mins[i], _mm512_and_si512(_mm512_or_si512(pairs, _mm512_slli_epi32(pairs, 8)), pair_bytes));
        }
    }
}

inline int32_t word_at(const void* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Bit `bit` of every byte moved to bit 4 (the other bits are masked off by the caller: 16-bit
// shifts of at most 4 carry only into bits that 0x10 drops).
inline __m512i bit_to_4(__m512i v, int bit) {
    return bit < 4 ? _mm512_slli_epi16(v, 4 - bit) : bit > 4 ? _mm512_srli_epi16(v, bit - 4) : v;
}

// A sixteen-row kernel over n_tok tokens, 8 a call (the last call 1-8), each width its own
// instantiation: a token's arithmetic is the same whatever the width, so its bits never depend on
// the batch. Only the first call prefetches (the tile's share of the next one).
template <typename Kernel>
inline void in_calls_of_8(const void* const* acts, int n_tok, float* sums, PrefetchLines prefetch, Kernel kernel) {
    for (int t0 = 0; t0 < n_tok; t0 += 8) {
        const PrefetchLines lines = t0 == 0 ? prefetch : PrefetchLines{};
        const auto call = [&]<int NT>(std::integral_constant<int, NT>) { kernel.template operator()<NT>(acts + t0, sums + 16 * t0, lines); };
        switch (std::min(8, n_tok - t0)) {
            case 1: call(std::integral_constant<int, 1>{}); break;
            case 2: call(std::integral_constant<int, 2>{}); break;
            case 3: call(std::integral_constant<int, 3>{}); break;
            case 4: call(std::integral_constant<int, 4>{}); break;
            case 5: call(std::integral_constant<int, 5>{}); break;
            case 6: call(std::integral_constant<int, 6>{}); break;
            case 7: call(std::integral_constant<int, 7>{}); break;
            default: call(std::integral_constant<int, 8>{}); break;
        }
    }
}

template <bool kQ5, int NT>
void rows_16_q4k_n(const PackedBlock16* packed, int64_t n_blocks, const void* const* acts, float* sums,
                   PrefetchLines prefetch) {
    const ActivationBlockQ8K* a[NT];
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationBlockQ8K*>(acts[t]);
        acc[t] = _mm512_setzero_ps();
    }
    const __m512i low4 = _mm512_set1_epi8(0x0f), bit4 = _mm512_set1_epi8(0x10);
    for (int64_t i = 0; i < n_blocks; ++i) {
        if (prefetch.lines) prefetch_share(prefetch, i, n_blocks);
        const auto& p = *reinterpret_cast<const Packed16Q4K*>(packed + i);
        __m512 f[NT];
        for (int t = 0; t < NT; ++t) f[t] = _mm512_setzero_ps();
        for (int v = 0; v < 4; ++v) {  // sub-blocks 2v (low nibbles) and 2v + 1 (high nibbles)
            __m512i lo[NT], hi[NT];
            for (int t = 0; t < NT; ++t) lo[t] = hi[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int k = 0; k < 8; ++k) {
                const __m512i q = _mm512_load_si512(p.qs[8 * v + k]);
                __m512i ql = _mm512_and_si512(q, low4), qh = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
                if constexpr (kQ5) {
                    const __m512i h = _mm512_load_si512(p.qh[k]);
                    ql = _mm512_or_si512(ql, _mm512_and_si512(bit_to_4(h, 2 * v), bit4));
                    qh = _mm512_or_si512(qh, _mm512_and_si512(bit_to_4(h, 2 * v + 1), bit4));
                }
                for (int t = 0; t < NT; ++t) {
                    const int8_t* x = a[t][i].qs + 64 * v + 4 * k;
                    lo[t] = _mm512_dpbusd_epi32(lo[t], ql, _mm512_set1_epi32(word_at(x)));
                    hi[t] = _mm512_dpbusd_epi32(hi[t], qh, _mm512_set1_epi32(word_at(x + 32)));
                }
            }
            const __m512 s_lo = _mm512_load_ps(p.ds[2 * v]), s_hi = _mm512_load_ps(p.ds[2 * v + 1]);
            for (int t = 0; t < NT; ++t) {
                f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[t]), s_lo, f[t]);
                f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi[t]), s_hi, f[t]);
            }
        }
        const __m512 dmin = _mm512_load_ps(p.dmin);
        for (int t = 0; t < NT; ++t) {
            __m512i offset = _mm512_setzero_si512();
            for (int j = 0; j < 4; ++j)
                offset = _mm512_dpwssd_epi32(offset, _mm512_load_si512(p.mins[j]), _mm512_set1_epi32(word_at(a[t][i].bsums32 + 2 * j)));
            f[t] = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(offset), f[t]);
            acc[t] = _mm512_fmadd_ps(f[t], _mm512_set1_ps(a[t][i].d), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) _mm512_storeu_ps(sums + 16 * t, acc[t]);
}

template <bool kQ5>
void rows_16_q4k(const PackedBlock16* packed, int64_t n_blocks, const void* const* acts, int n_tok, float* sums,
                 PrefetchLines prefetch) {
    in_calls_of_8(acts, n_tok, sums, prefetch, [&]<int NT>(const void* const* a, float* s, PrefetchLines lines) {
        rows_16_q4k_n<kQ5, NT>(packed, n_blocks, a, s, lines);
    });
}

// Q6_K, the same way: sixteen 16-element sub-blocks with int8 scales, w = d sc (q - 32). Per four
// positions l .. l + 3 of a 128-element half n, ql word A (ql[64n + l]), B (ql[64n + 32 + l]) and qh
// word H (qh[32n + l]) hold the 6-bit values of elements 128n + 32m + l (m = 0..3): m = 0 low
// nibbles of A with H's bits 0-1, m = 1 low nibbles of B with bits 2-3, m = 2 and 3 the high nibbles
// with bits 4-5 and 6-7. Four vpdpbusd a row add the dot of the stored values q + 32 to an
// accumulator that starts at -32 bsum_j (the activations' sum over the sub-block: the bsums are
// per 16, like the sub-blocks), so the integer is the dot of q itself, exactly. Taking the 32 sum(a)
// off in float afterwards instead cancelled two large terms: rows of zero weights (q = 32) came out
// at 4e-4 instead of 0, and near-zero rows 3e-5 of sum |w x| off (a review's harness).
struct Packed16Q6K {
    uint32_t ql[32][16];     // [c][r]: ql bytes 4c .. 4c + 3 of row r (A of half n, k: c = 16n + k; B: 16n + 8 + k)
    uint32_t qh[16][16];     // [c][r]: qh bytes 4c .. 4c + 3 (H of half n, k: c = 8n + k)
    float ds[16][16];        // d * sc_j
};
static_assert(sizeof(Packed16Q6K) <= sizeof(PackedBlock16));

void repack_16_q6k(const void* wv, int64_t row_bytes, int64_t n_blocks, PackedBlock16* packed) {
    const auto* w = static_cast<const uint8_t*>(wv);
    for (int64_t i = 0; i < n_blocks; ++i) {
        auto& p = *reinterpret_cast<Packed16Q6K*>(packed + i);
        const uint8_t* b = w + i * int64_t(sizeof(BlockQ6_K));
        transpose_rows_16(b, row_bytes, offsetof(BlockQ6_K, ql), 128, p.ql);
        transpose_rows_16(b, row_bytes, offsetof(BlockQ6_K, qh), 64, p.qh);
        __m512i sc[4], tail[4];
        row_words_4(b, row_bytes, offsetof(BlockQ6_K, scales), sc);
        // d ends the block: the last 16 bytes (scales 2-15, d) stay inside it
        row_words_4(b, row_bytes, int64_t(sizeof(BlockQ6_K)) - 16, tail);
        const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(tail[3], 16)));
        for (int j = 0; j < 16; ++j)
            _mm512_store_ps(p.ds[j], _mm512_mul_ps(d, _mm512_cvtepi32_ps(signed_byte(sc[j / 4], j % 4))));  // exact
    }
}

template <int NT>
void rows_16_q6k_n(const PackedBlock16* packed, int64_t n_blocks, const void* const* acts, float* sums,
                   PrefetchLines prefetch) {
    const ActivationBlockQ8K* a[NT];
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationBlockQ8K*>(acts[t]);
        acc[t] = _mm512_setzero_ps();
    }
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
    const __m512i minus_32 = _mm512_set1_epi32(0x0000ffe0);  // int16 pair (-32, 0)
    for (int64_t i = 0; i < n_blocks; ++i) {
        if (prefetch.lines) prefetch_share(prefetch, i, n_blocks);
        const auto& p = *reinterpret_cast<const Packed16Q6K*>(packed + i);
        __m512 f[NT];
        for (int t = 0; t < NT; ++t) f[t] = _mm512_setzero_ps();
        for (int n = 0; n < 2; ++n)
            for (int half16 = 0; half16 < 2; ++half16)  // positions l = 16 half16 .. + 15: sub-block 8n + 2m + half16
                for (int m = 0; m < 4; ++m) {
                    const int j = 8 * n + 2 * m + half16;
                    __m512i dot[NT];
                    // -32 bsum_j: one vpmaddwd of the broadcast word (bsum_j, bsum_j+1) against (-32, 0), in
                    // place of a scalar multiply and a broadcast from a general register per token
                    for (int t = 0; t < NT; ++t)
                        dot[t] = _mm512_madd_epi16(_mm512_set1_epi32(word_at(a[t][i].bsums + j)), minus_32);
                    for (int k = 4 * half16; k < 4 * half16 + 4; ++k) {
                        const __m512i ab = _mm512_load_si512(p.ql[16 * n + 8 * (m % 2) + k]);
                        const __m512i h = _mm512_load_si512(p.qh[8 * n + k]);
                        const __m512i nib = m < 2 ? _mm512_and_si512(ab, low4) : _mm512_and_si512(_mm512_srli_epi16(ab, 4), low4);
                        const __m512i top = m == 0 ? _mm512_slli_epi16(h, 4) : m == 1 ? _mm512_slli_epi16(h, 2)
                                          : m == 2 ? h : _mm512_srli_epi16(h, 2);
                        const __m512i q = _mm512_or_si512(nib, _mm512_and_si512(top, bits45));
                        for (int t = 0; t < NT; ++t)
                            dot[t] = _mm512_dpbusd_epi32(dot[t], q, _mm512_set1_epi32(word_at(a[t][i].qs + 128 * n + 32 * m + 4 * k)));
                    }
                    const __m512 s = _mm512_load_ps(p.ds[j]);
                    for (int t = 0; t < NT; ++t) f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), s, f[t]);
                }
        for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(f[t], _mm512_set1_ps(a[t][i].d), acc[t]);
    }
    for (int t = 0; t < NT; ++t) _mm512_storeu_ps(sums + 16 * t, acc[t]);
}

void rows_16_q6k(const PackedBlock16* packed, int64_t n_blocks, const void* const* acts, int n_tok, float* sums,
                 PrefetchLines prefetch) {
    in_calls_of_8(acts, n_tok, sums, prefetch, [&]<int NT>(const void* const* a, float* s, PrefetchLines lines) {
        rows_16_q6k_n<NT>(packed, n_blocks, a, s, lines);
    });
}

// Q8_0, sixteen rows the same way. The row-at-a-time kernel below spends four vector operations
// beside each vpdpbusd (it takes a pair of blocks of one row per instruction, so every block's
// scale is permuted into place per token); with the rows across the lanes, a block of 16 rows is
// eight vpdpbusd a token against broadcast activation words, and the block's scale is applied once
// per token: ~4x the one-row kernel's rate at 16+ tokens (bench_quant), which is what MLA's W_UV
// products and Q8_0 models run at. The weights are stored unsigned (u = w + 128, the sign bit
// flipped), so dot(w, a) = dot(u, a) - 128 sum(a): the accumulator starts at -128 sum(a), one
// vpmaddwd of the block's sum (it fits int16: |sum| <= 32 x 127) against (-128, 0), and the integer
// is the exact dot. Per block and token: dw da rounded once, one FMA of the converted block dot
// (the one-row kernel converts per-lane partial dots instead, so the two differ in the last bits;
// a row always takes the same one, whatever the tokens); the blocks are added in order, a token at
// a time, so a token's bits never depend on the batch. A packed entry holds four blocks (128
// columns), an activation group two entries: a call must start at an even entry (the caller's
// column chunks are whole activation groups), and a row takes sixteen rows only where it is whole
// entries.
struct Packed16Q8_0 {  // four blocks of 16 rows
    uint32_t qs[32][16];  // [8j + k][r]: bytes 4k .. 4k + 3 of block j of row r, sign bits flipped
    float d[4][16];       // [j][r]
};
static_assert(sizeof(Packed16Q8_0) <= sizeof(PackedBlock16));
constexpr int64_t kQ8_0BlocksPerEntry = 4;

void repack_16_q8_0(const void* wv, int64_t row_bytes, int64_t n_entries, PackedBlock16* packed) {
    const auto* w = static_cast<const uint8_t*>(wv);
    const __m512i sign = _mm512_set1_epi8(char(0x80));
    for (int64_t i = 0; i < n_entries; ++i) {
        auto& p = *reinterpret_cast<Packed16Q8_0*>(packed + i);
        for (int j = 0; j < kQ8_0BlocksPerEntry; j += 2) {  // two blocks a transpose: a row's 64 bytes of qs
            __m512i r[16];
            alignas(32) uint16_t d[2][16];
            for (int row = 0; row < 16; ++row) {
                const auto* b = reinterpret_cast<const BlockQ8_0*>(w + row * row_bytes) + kQ8_0BlocksPerEntry * i + j;
                const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[0].qs));
                const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[1].qs));
                r[row] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), sign);
                d[0][row] = b[0].d;
                d[1][row] = b[1].d;
            }
            transpose_16x16_words(r);  // r[c][row]: word c of the two blocks' 64 bytes
            for (int c = 0; c < 16; ++c) _mm512_store_si512(p.qs[8 * j + c], r[c]);
            for (int h = 0; h < 2; ++h)
                _mm512_store_ps(p.d[j + h], _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(d[h]))));
        }
    }
}

template <int NT>
void rows_16_q8_0_n(const PackedBlock16* packed, int64_t n_entries, const void* const* acts, float* sums,
                    PrefetchLines prefetch) {
    const ActivationGroupQ8* a[NT];
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationGroupQ8*>(acts[t]);
        acc[t] = _mm512_setzero_ps();
    }
    const __m512i minus_128 = _mm512_set1_epi32(0x0000ff80);  // int16 pair (-128, 0)
    for (int64_t i = 0; i < n_entries; ++i) {
        if (prefetch.lines) prefetch_share(prefetch, i, n_entries);
        const auto& p = *reinterpret_cast<const Packed16Q8_0*>(packed + i);
        const int64_t group = i / 2;
        for (int j = 0; j < kQ8_0BlocksPerEntry; ++j) {
            const int slot = int(kQ8_0BlocksPerEntry * (i % 2)) + j;
            __m512i dot[NT];
            for (int t = 0; t < NT; ++t)
                dot[t] = _mm512_madd_epi16(_mm512_set1_epi32(a[t][group].sum[slot]), minus_128);
#pragma GCC unroll 8
            for (int k = 0; k < 8; ++k) {
                const __m512i u = _mm512_load_si512(p.qs[8 * j + k]);
                for (int t = 0; t < NT; ++t)
                    dot[t] = _mm512_dpbusd_epi32(dot[t], u, _mm512_set1_epi32(word_at(a[t][group].qs[slot] + 4 * k)));
            }
            const __m512 dw = _mm512_load_ps(p.d[j]);
            for (int t = 0; t < NT; ++t)
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(dw, _mm512_set1_ps(a[t][group].d[slot])), acc[t]);
        }
    }
    for (int t = 0; t < NT; ++t) _mm512_storeu_ps(sums + 16 * t, acc[t]);
}

void rows_16_q8_0(const PackedBlock16* packed, int64_t n_entries, const void* const* acts, int n_tok, float* sums,
                  PrefetchLines prefetch) {
    in_calls_of_8(acts, n_tok, sums, prefetch, [&]<int NT>(const void* const* a, float* s, PrefetchLines lines) {
        rows_16_q8_0_n<NT>(packed, n_entries, a, s, lines);
    });
}

// ---- Q8_0 / Q4_0 against per-32 activations (ActivationGroupQ8), two blocks per vector -------
// The weights are made unsigned so vpdpbusd takes them against the signed activations as they are:
// Q8_0 flips the sign bit (u = w + 128), Q4_0 keeps its nibbles (u = w + 8), and
//   dot(w, a) = dot(u, a) - bias * sum(a),
// exactly, in int32: the accumulator starts at -bias/8 * sum(a) in each of a block's 8 lanes.
// Per group of 8 blocks the 8 weight scales are gathered once into a vector shared by the tokens;
// per token the group's dw * da is one multiply, and each pair of blocks is one vpdpbusd, one
// conversion, two permutes (the start values, dw * da to the pair's two halves) and one FMA.
struct Q8_0Pair {
    using Block = BlockQ8_0;
    static constexpr int kBiasPerLane = 128 / 8;
    // blocks b[0] and (when two) b[1] as 64 unsigned bytes; a missing second block reads as zero
    static __m512i weights(const Block* b, bool two) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[0].qs));
        const __m256i w1 = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[1].qs)) : _mm256_set1_epi8(char(0x80));
        return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), _mm512_set1_epi8(char(0x80)));
    }
};
template <bool kGfni>
struct Q4_0Pair {
    using Block = BlockQ4_0;
    static constexpr int kBiasPerLane = 8 / 8;
    // 128-bit lanes: low nibbles of b[0] (elements 0-15), its high nibbles (16-31), then b[1]'s
    static __m512i weights(const Block* b, bool two) {
        const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[0].qs));
        const __m128i q1 = two ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[1].qs)) : _mm_setzero_si128();
        const __m512i both = _mm512_castsi256_si512(_mm256_set_m128i(q1, q0));
        const __m512i lanes = _mm512_shuffle_i64x2(both, both, 0x50);  // q0, q0, q1, q1
        if constexpr (kGfni) {
            constexpr auto lo = int64_t(bit_select_matrix(0, 4, 0)), hi = int64_t(bit_select_matrix(4, 4, 0));
            return _mm512_gf2p8affine_epi64_epi8(lanes, _mm512_set_epi64(hi, hi, lo, lo, hi, hi, lo, lo), 0);
        } else {
            return _mm512_and_si512(_mm512_srlv_epi64(lanes, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(0xF));
        }
    }
};

// lane j of pair p takes block 2p + j / 8's value
alignas(64) constexpr int32_t kPairScaleIndex[4][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}, {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5}, {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7}};

template <typename P, int NT>
void row_group_32_n(const void* wv, int64_t n_blocks, const void* const* acts, float* sums) {
    using Block = typename P::Block;
    const auto* w = static_cast<const Block*>(wv);
    // Two accumulators per token (even / odd pairs) so the FMAs do not queue on one another's
    // latency at few tokens. Every token count sums the same way: a token's result must not depend
    // on how many tokens share the call (batch invariance; one accumulator from 4 tokens on made
    // a decode token round differently alone than in a batch).
    constexpr int kAccs = 2;
    const ActivationGroupQ8* a[NT];
    __m512 acc[kAccs][NT];
    for (int t = 0; t < NT; ++t) {
        a[t] = static_cast<const ActivationGroupQ8*>(acts[t]);
        for (int k = 0; k < kAccs; ++k) acc[k][t] = _mm512_setzero_ps();
    }
    // byte offsets of the 8 blocks' f16 scales; a 4-byte gather at each stays inside its block
    const __m256i d_offsets = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(sizeof(Block)));
    for (int64_t g = 0; 8 * g < n_blocks; ++g) {
        const Block* wb = w + 8 * g;
        const int nb = int(std::min<int64_t>(8, n_blocks - 8 * g));
        prefetch_ahead<8 * sizeof(Block)>(wb);
        const __mmask8 present = __mmask8((1u << nb) - 1);
        const __m256i d_words = _mm256_mmask_i32gather_epi32(_mm256_setzero_si256(), present, d_offsets, wb, 1);
        const __m256 dw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(d_words));  // 0 for absent blocks
        __m512 dwda[NT];
        __m512i start[NT];
        for (int t = 0; t < NT; ++t) {  // permute indices stay below 8: the upper halves are never read
            dwda[t] = _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_load_ps(a[t][g].d)));
            start[t] = _mm512_castsi256_si512(_mm256_mullo_epi32(
                _mm256_load_si256(reinterpret_cast<const __m256i*>(a[t][g].sum)), _mm256_set1_epi32(-P::kBiasPerLane)));
        }
        const int pairs = (nb + 1) / 2;
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) {
            if (p >= pairs) break;
            const __m512i u = P::weights(wb + 2 * p, 2 * p + 1 < nb);
            const __m512i index = _mm512_load_si512(kPairScaleIndex[p]);
            for (int t = 0; t < NT; ++t) {
                const __m512i dot = _mm512_dpbusd_epi32(_mm512_permutexvar_epi32(index, start[t]), u,
                                                        _mm512_load_si512(a[t][g].qs[2 * p]));
                __m512& acc_t = acc[p % kAccs][t];
                acc_t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(index, dwda[t]), acc_t);
            }
        }
    }
    for (int t = 0; t < NT; ++t) {
        __m512 total = acc[0][t];
        if constexpr (kAccs == 2) total = _mm512_add_ps(total, acc[1][t]);
        sums[t] = _mm512_reduce_add_ps(total);
    }
}

template <typename W>
void row_group_32(const void* w, int64_t n_blocks, const void* const* acts, int n_tok, float* sums) {
    switch (n_tok) {
        case 1: return row_group_32_n<W, 1>(w, n_blocks, acts, sums);
        case 2: return row_group_32_n<W, 2>(w, n_blocks, acts, sums);
        case 3: return row_group_32_n<W, 3>(w, n_blocks, acts, sums);
        case 4: return row_group_32_n<W, 4>(w, n_blocks, acts, sums);
        case 5: return row_group_32_n<W, 5>(w, n_blocks, acts, sums);
        case 6: return row_group_32_n<W, 6>(w, n_blocks, acts, sums);
        case 7: return row_group_32_n<W, 7>(w, n_blocks, acts, sums);
        default: return row_group_32_n<W, 8>(w, n_blocks, acts, sums);
    }
}

// ---- activation quantisers: the scalar ones' arithmetic (quantize_activations.hpp: q = nearest
// even of x * 127 / amax), so every path quantises to the same bytes ----------------------------------------
// d and 1/d by the rules in quantize_activations.hpp; the f16 rounding with F16C
inline float q8_block_scale(float amax, float& inv) {
    inv = q8_inverse_scale(amax);
    return _cvtsh_ss(_cvtss_sh(q8_scale_before_f16(amax), 0));
}
inline float q8k_block_scale(float amax, float& inv) {
    inv = q8_inverse_scale(amax);
    return q8k_scale(inv);
}
inline __m512 abs_ps(__m512 v) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff))); }

void quantize_q8(const float* x, ActivationGroupQ8* out, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32) {
        ActivationGroupQ8& g = out[b / 8];
        const int slot = int(b % 8);
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        float inv;
        g.d[slot] = q8_block_scale(_mm512_reduce_max_ps(_mm512_max_ps(abs_ps(v0), abs_ps(v1))), inv);
        const __m512 scale = _mm512_set1_ps(inv);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, scale)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, scale));
        _mm_store_si128(reinterpret_cast<__m128i*>(g.qs[slot]), _mm512_cvtsepi32_epi8(q0));
        _mm_store_si128(reinterpret_cast<__m128i*>(g.qs[slot] + 16), _mm512_cvtsepi32_epi8(q1));
        g.sum[slot] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
    clear_unused_slots(out, n);
}

void quantize_q8k(const float* x, ActivationBlockQ8K* out, int64_t n) {
    for (int64_t b = 0; b < n / 256; ++b, x += 256) {
        __m512 amax = _mm512_setzero_ps();
        for (int g = 0; g < 16; ++g) amax = _mm512_max_ps(amax, abs_ps(_mm512_loadu_ps(x + 16 * g)));
        float inv;
        out[b].d = q8k_block_scale(_mm512_reduce_max_ps(amax), inv);
        const __m512 scale = _mm512_set1_ps(inv);
        for (int g = 0; g < 16; ++g) {
            const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * g), scale));
            _mm_store_si128(reinterpret_cast<__m128i*>(out[b].qs + 16 * g), _mm512_cvtsepi32_epi8(q));
            out[b].bsums[g] = int16_t(_mm512_reduce_add_epi32(q));
        }
        fill_bsums32(out[b]);
    }
}

}  // namespace

// 8 tokens: 8 int32 + 8 float accumulators beside the weight and scale vectors in 32 registers.
// Q6_K's four rows sum each row's lanes in int32 before the float epilogue (row_sums), as its one
// row and sixteen rows do: the offset then never cancels in float (and the AMX path's few-token
// Q6_K calls take the same kernel).
const RowGroupTable& avx512_vnni_row_groups() {
    static const RowGroupTable table{8, row_group_32<Q8_0Pair>, row_group_32<Q4_0Pair<false>>, row_group_k<Q2K<false>>,
                                     row_group_k<Q3K<false>>, row_group_k<Q4K<false>>, row_group_k<Q5K<false>>,
                                     row_group_k<Q6K<false>>, quantize_q8, quantize_q8k,
                                     quad_rows<QuadQ2K<false>>, quad_rows<QuadQ3K<false>>, quad_rows<QuadQ4K<false>>,
                                     quad_rows<QuadQ5K<false>>, quad_rows<QuadQ6K<false>, true>,
                                     quad_rows<QuadQ4K<false>, true>, 16,
                                     {repack_16_q4k<false>, rows_16_q4k<false>},
                                     {repack_16_q4k<true>, rows_16_q4k<true>}, {repack_16_q6k, rows_16_q6k},
                                     {repack_16_q8_0, rows_16_q8_0, kQ8_0BlocksPerEntry}};
    return table;
}
const RowGroupTable& avx512_vnni_gfni_row_groups() {
    static const RowGroupTable table{8, row_group_32<Q8_0Pair>, row_group_32<Q4_0Pair<true>>, row_group_k<Q2K<true>>,
                                     row_group_k<Q3K<true>>, row_group_k<Q4K<true>>, row_group_k<Q5K<true>>,
                                     row_group_k<Q6K<true>>, quantize_q8, quantize_q8k,
                                     quad_rows<QuadQ2K<true>>, quad_rows<QuadQ3K<true>>, quad_rows<QuadQ4K<true>>,
                                     quad_rows<QuadQ5K<true>>, quad_rows<QuadQ6K<true>, true>,
                                     quad_rows<QuadQ4K<true>, true>, 16,
                                     {repack_16_q4k<false>, rows_16_q4k<false>},
                                     {repack_16_q4k<true>, rows_16_q4k<true>}, {repack_16_q6k, rows_16_q6k},
                                     {repack_16_q8_0, rows_16_q8_0, kQ8_0BlocksPerEntry}};
    return table;
}

}  // namespace sluice::cpu::quant_kernels

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
