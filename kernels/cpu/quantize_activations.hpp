// Activations quantised on the fly to int8, the partner of the fused quantised-weight dots in
// quant_dot.hpp (as llama.cpp pairs Q8_0/Q4_0 weights with Q8_0 and K-quants with Q8_K).
#pragma once

#include <cstdint>

namespace sluice::cpu {

// Per 32 elements, for Q8_0 / Q4_0 weights whose scales are per 32 too, stored 8 blocks (256
// elements) to a group: each block's int8 sit on a 32-byte boundary, two neighbours make one
// 64-byte vector, and a group's 8 scales and sums load as one vector each. Block b of a row is
// group b / 8, slot b % 8; a row of n elements takes ceil(n / 256) groups (the last may be partial).
struct alignas(64) ActivationGroupQ8 {
    int8_t qs[8][32];  // in [-127, 127]
    float d[8];        // x ≈ d * qs, per block
    int32_t sum[8];    // sum of each block's qs: unsigned-weight kernels subtract their offset with it
};
static_assert(sizeof(ActivationGroupQ8) == 320);

// Per 256 elements (one K-quant super-block): a single scale per super-block lets a K-quant
// kernel add up every sub-block's integer dot times its integer scale in int32 and convert to
// float once per super-block. 64-byte aligned so the kernels' 64-byte loads of qs stay in one line.
struct alignas(64) ActivationBlockQ8K {
    int8_t qs[256];     // in [-127, 127]
    int16_t bsums[16];  // sums of qs per 16: the K-quants' minimum / offset terms come from these
    float d;            // x ≈ d * qs
    // Sums of qs per 32 (bsums[2j] + bsums[2j + 1]), for Q4_K / Q5_K's minimums, which are per 32:
    // word i holds the sums of sub-blocks 2i and 2i + 1, so one vpdpwssd against a row's pair of
    // minimums adds two sub-blocks' terms. Written by every quantize_q8k; in the block's padding.
    int16_t bsums32[8];
};
static_assert(sizeof(ActivationBlockQ8K) == 320);

// bsums32 from bsums: every quantize_q8k ends a block with it.
inline void fill_bsums32(ActivationBlockQ8K& b) {
    for (int j = 0; j < 8; ++j) b.bsums32[j] = int16_t(b.bsums[2 * j] + b.bsums[2 * j + 1]);
}

// The scales are llama.cpp's (quantize_row_q8_0 / quantize_row_q8_K), so the fused results are
// its kernels' to float rounding (GEMV within 4e-7 of ggml's; hf_small_v3.Q2_K logits within
// 2e-6 of llama.cpp's): both multiply by inv = 127 / amax and round to nearest even; Q8_0-style
// blocks keep d = amax / 127 rounded to f16 (block_q8_0 stores an f16), Q8_K-style blocks keep
// d = 1 / inv in f32. amax = 0 gives d = inv = 0. Each path rounds d to f16 its own way (F16C
// where it has it); the rest is here.
inline float q8_inverse_scale(float amax) { return amax != 0.0f ? 127.0f / amax : 0.0f; }
inline float q8_scale_before_f16(float amax) { return amax / 127.0f; }
inline float q8k_scale(float inv) { return inv != 0.0f ? 1.0f / inv : 0.0f; }

// n must be a multiple of 32; writes n / 32 blocks into ceil(n / 256) groups.
void quantize_activations_q8(const float* x, ActivationGroupQ8* out, int64_t n);

// Zeroes the slots past the last block of a partial last group, so kernels that read a whole
// group's scales as one vector see 0, never a stale value (a NaN left by an earlier call).
inline void clear_unused_slots(ActivationGroupQ8* out, int64_t n) {
    const int64_t blocks = n / 32;
    if (blocks % 8 == 0) return;
    ActivationGroupQ8& last = out[blocks / 8];
    for (int slot = int(blocks % 8); slot < 8; ++slot) {
        last.d[slot] = 0.0f;
        last.sum[slot] = 0;
        for (auto& q : last.qs[slot]) q = 0;
    }
}

// n must be a multiple of 256; writes n / 256 blocks.
void quantize_activations_q8k(const float* x, ActivationBlockQ8K* out, int64_t n);

}  // namespace sluice::cpu
