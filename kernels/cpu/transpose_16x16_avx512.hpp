// A 16 x 16 transpose of 32-bit words in sixteen AVX-512 registers: the repacks of the sixteen-row
// quantised kernels (quant_dot_avx512.cpp) and the bf16 attention's key layout (attention_bf16.cpp).
// Include after the file's AVX-512 target pragma: the function takes that target.
#pragma once

#include <immintrin.h>

namespace sluice::cpu {

// r[i] holds 16 words of row i; on return r[c] holds word c of rows 0..15 (lane order = rows).
static inline void transpose_16x16_words(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);      // per 128-bit lane L: words 4L, 4L + 1 of rows i, i + 1
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);  // words 4L + 2, 4L + 3
    }
    for (int i = 0; i < 16; i += 4) {  // r[i + e]: per lane L, word 4L + e of rows i .. i + 3
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    __m512i out[16];
    for (int e = 0; e < 4; ++e) {  // lane L of r[4g + e] becomes lane g of word 4L + e
        const __m512i ab_lo = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x44), ab_hi = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xee);
        const __m512i cd_lo = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x44), cd_hi = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xee);
        out[e] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
        out[4 + e] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xdd);
        out[8 + e] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
        out[12 + e] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xdd);
    }
    for (int c = 0; c < 16; ++c) r[c] = out[c];
}

}  // namespace sluice::cpu
