// f32 values into the words vdpbf16ps multiplies: a word is a pair of bf16 (low half first),
// rounded to nearest even. Shared by the bf16 attention (attention_bf16.cpp) and the bf16 tiles
// (gemm_bf16_tiles.cpp). Include after the file's AVX-512 BF16 target pragma: the functions take
// that target.
#pragma once

#include <immintrin.h>

namespace sluice::cpu {

static inline __m512bh as_bf16(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// 32 consecutive floats as 16 words (x[2w], x[2w + 1]).
static inline __m512i pair_words(const float* x) {
    const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
    return reinterpret_cast<const __m512i&>(b);
}

// 16 floats as the low halves of 16 words (high halves 0).
static inline __m512i bf16_lanes(const float* x) {
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(x));
    return _mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(b));
}

// 16 words (lo[i], hi[i]): the same lane of two rows paired.
static inline __m512i pair_lanes(const float* lo, const float* hi) {
    return _mm512_or_si512(bf16_lanes(lo), _mm512_slli_epi32(bf16_lanes(hi), 16));
}

}  // namespace sluice::cpu
