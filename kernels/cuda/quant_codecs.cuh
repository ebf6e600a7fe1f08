// Device decoders for the stored weight formats (spec §3.9), one group of 32 consecutive weights
// of a row at a time: the unit both the GEMV (one group per lane) and the dequantise-for-GEMM
// kernels work in. Group g of a row covers columns [32g, 32g + 32). Host and device compile the
// same code, so tests/cuda/codec_test.cu proves every decoder against gguf-py on any machine.
//
// Each decoder returns the CPU dequantiser's floats bit for bit (kernels/dequantize_quant.cpp,
// itself bit-identical to gguf-py): the same products and sums in the same order, each rounded on
// its own (mul_rn / add_rn: nvcc would otherwise fuse d*q - m into one FMA). Bit fields are
// unpacked four weights at a time in 32-bit words (a byte per weight), small integers become
// floats by dropping them into the mantissa of 2^23 (PRMT + FADD, both full-rate, where I2F is
// quarter-rate on sm_80..89), and everything stays in named registers: no arrays indexed at run
// time, so nothing spills to local memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/block_type.hpp"
#include "kernels/quant_blocks.hpp"

// A plain host compiler must not contract either (g++ contracts across statements when the
// target has FMA, e.g. under -march=native): the host build is what proves the decoders exact.
// nvcc's front end drops this pragma, but its host pass targets baseline x86-64 (no FMA).
#if !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

namespace sluice::cuda::detail {

#define SLUICE_HD __host__ __device__ __forceinline__
// Unrolling hints for the device pass only (the host compiler warns about the pragma).
#ifdef __CUDA_ARCH__
#define SLUICE_UNROLL _Pragma("unroll")
#else
#define SLUICE_UNROLL
#endif

SLUICE_HD float half_bits_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
SLUICE_HD float bf16_bits_to_float(uint16_t bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }

// e4m3fn -> f32 by placing exponent and mantissa at f16 positions (bias 7 vs 15: a factor
// 2^-8 undone by the multiply); subnormals map exactly too. Same widening as the CPU path.
SLUICE_HD float fp8_e4m3_to_float(uint8_t byte) {
    const uint16_t h = uint16_t((uint16_t(byte & 0x80) << 8) | (uint16_t(byte & 0x7f) << 7));
    return half_bits_to_float(h) * 256.0f;
}

// ---- arithmetic rounded step by step, as the CPU dequantisers do ----
SLUICE_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
SLUICE_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
SLUICE_HD float bits_as_float(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

// PRMT: byte i of the result is byte (s >> 4i) & 7 of the 8 bytes {y, x} (x the low four), as
// CUDA documents __byte_perm (callers keep bit 3 of each selector nibble clear: PTX's prmt would
// read it as sign replication). The host copy lets the host test run the device's bit moves.
SLUICE_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, s);
#else
    const uint64_t both = (uint64_t(y) << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; ++i) r |= (uint32_t(both >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
#endif
}

// Byte k of w (an unsigned value < 256) minus `bias`, exactly, as a float: PRMT drops the byte into
// the low mantissa bits of 2^23's pattern 0x4B000000 and one subtraction of 2^23 + bias leaves
// the integer (every value involved is an integer below 2^24, so nothing rounds).
SLUICE_HD float byte_value(uint32_t w, int k, float bias) {
    return bits_as_float(byte_perm(w, 0x4B000000u, 0x7440u | uint32_t(k))) - (8388608.0f + bias);
}

// 4-bit fields (one per byte, each < 16) looked up in a 16-entry int8 table held in four
// registers: PRMT picks from table bytes 0..7 and from 8..15, bit 3 of each index chooses.
SLUICE_HD uint32_t table16_lookup(uint32_t idx, uint32_t t0, uint32_t t1, uint32_t t2, uint32_t t3) {
    const uint32_t packed = idx | (idx >> 4);  // byte 0: i0 | i1 << 4, byte 2: i2 | i3 << 4
    const uint32_t sel = ((packed & 0xff) | ((packed >> 8) & 0xff00)) & 0x7777;
    const uint32_t low = byte_perm(t0, t1, sel), high = byte_perm(t2, t3, sel);
    const uint32_t take_high = ((idx >> 3) & 0x01010101u) * 0xffu;
    return (low & ~take_high) | (high & take_high);
}

// Four bits (h < 16) spread to the low bit of four bytes: the multiply's shifted copies never
// overlap, so bit i lands at bit 8i.
SLUICE_HD uint32_t spread_bits4(uint32_t h) { return (h * 0x00204081u) & 0x01010101u; }

// ---- loads: read-only path on the device, the widest the block alignment allows ----
SLUICE_HD uint32_t load_u16(const uint8_t* p) {  // p 2-aligned
#ifdef __CUDA_ARCH__
    return __ldg(reinterpret_cast<const unsigned short*>(p));
#else
    return *reinterpret_cast<const uint16_t*>(p);
#endif
}
SLUICE_HD uint32_t load_u32(const uint8_t* p) {  // p 4-aligned
#ifdef __CUDA_ARCH__
    return __ldg(reinterpret_cast<const unsigned int*>(p));
#else
    return *reinterpret_cast<const uint32_t*>(p);
#endif
}
SLUICE_HD uint2 load_u64(const uint8_t* p) {  // p 8-aligned
#ifdef __CUDA_ARCH__
    return __ldg(reinterpret_cast<const uint2*>(p));
#else
    return *reinterpret_cast<const uint2*>(p);
#endif
}
SLUICE_HD uint4 load_u128(const uint8_t* p) {  // p 16-aligned
#ifdef __CUDA_ARCH__
    return __ldg(reinterpret_cast<const uint4*>(p));
#else
    return *reinterpret_cast<const uint4*>(p);
#endif
}

SLUICE_HD uint32_t funnel_right(uint32_t lo, uint32_t hi, uint32_t shift) {  // shift 0 or 16 here
#ifdef __CUDA_ARCH__
    return __funnelshift_r(lo, hi, shift);
#else
    return uint32_t(((uint64_t(hi) << 32) | lo) >> shift);
#endif
}

// The little-endian words of 4N bytes at a 2-aligned p, from 32-bit loads that stay inside
// [p, p + 4N): when p is 2 mod 4, its first and last half-words come from 16-bit loads and each
// word is spliced from two neighbours (SHF). Blocks of 18, 22, 34, 110 or 210 bytes are only
// 2-aligned, and a 32-bit load past a row's end could leave the allocation.
template <int N>
struct Words {
    uint32_t w[N];
};
template <int N>
SLUICE_HD Words<N> load_words(const uint8_t* p) {
    const uint32_t misaligned = uint32_t(reinterpret_cast<uintptr_t>(p) & 2);
    const uint8_t* a = p - misaligned;  // 4-aligned
    const uint32_t shift = 8 * misaligned;
    Words<N> out;
    uint32_t prev = misaligned ? load_u16(p) << 16 : load_u32(p);
SLUICE_UNROLL
    for (int k = 0; k < N; ++k) {
        const uint32_t next = k + 1 < N ? load_u32(a + 4 * (k + 1)) : load_u16(p + 4 * N - 2);
        out.w[k] = funnel_right(prev, next, shift);
        prev = next;
    }
    return out;
}

// ---- the decoders ----

template <DType T>
struct Codec;

// Blocks of 32: group g is block g.

// The integer form of a group that the fused (int8 dot) GEMV also reads: 32 bytes of quants in
// weight order, four to a word, and the block's scale. Q8_0's bytes are signed, Q4_0's are the
// unsigned nibbles (the weight is nibble - 8).
struct BlockGroup {
    uint32_t u[8];
    float d;
};

template <>
struct Codec<DType::Q8_0> {
    static constexpr int block_bytes = 34, row_alignment = 2;
    SLUICE_HD static BlockGroup unpack(const uint8_t* row, int64_t g) {
        const uint8_t* b = row + g * block_bytes;
        const auto q = load_words<8>(b + 2);
        BlockGroup o;
SLUICE_UNROLL
        for (int i = 0; i < 8; ++i) o.u[i] = q.w[i];
        o.d = half_bits_to_float(uint16_t(load_u16(b)));
        return o;
    }
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const BlockGroup q = unpack(row, g);
SLUICE_UNROLL
        for (int i = 0; i < 8; ++i)
SLUICE_UNROLL
            for (int k = 0; k < 4; ++k) out[4 * i + k] = mul_rn(byte_value(q.u[i] ^ 0x80808080u, k, 128.0f), q.d);
    }
};

template <>
struct Codec<DType::Q4_0> {
    static constexpr int block_bytes = 18, row_alignment = 2;
    // Byte j's low nibble is weight j, its high nibble weight j + 16.
    SLUICE_HD static BlockGroup unpack(const uint8_t* row, int64_t g) {
        const uint8_t* b = row + g * block_bytes;
        const auto q = load_words<4>(b + 2);
        BlockGroup o;
SLUICE_UNROLL
        for (int i = 0; i < 4; ++i) {
            o.u[i] = q.w[i] & 0x0f0f0f0fu;
            o.u[4 + i] = (q.w[i] >> 4) & 0x0f0f0f0fu;
        }
        o.d = half_bits_to_float(uint16_t(load_u16(b)));
        return o;
    }
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const BlockGroup q = unpack(row, g);
SLUICE_UNROLL
        for (int i = 0; i < 8; ++i)
SLUICE_UNROLL
            for (int k = 0; k < 4; ++k) out[4 * i + k] = mul_rn(byte_value(q.u[i], k, 8.0f), q.d);
    }
};

// Q4_1 / Q5_0 / Q5_1 / IQ4_NL: byte j's low nibble is weight j, its high nibble weight j + 16.
// `values(i, high)` gives weights 4i..4i+3 (+16 if high) as four bytes; `store` finishes them.
template <typename Values, typename Store>
SLUICE_HD void decode_nibble_block(Values values, Store store) {
SLUICE_UNROLL
    for (int half = 0; half < 2; ++half)
SLUICE_UNROLL
        for (int i = 0; i < 4; ++i) {
            const uint32_t v = values(i, half);
SLUICE_UNROLL
            for (int k = 0; k < 4; ++k) store(16 * half + 4 * i + k, v, k);
        }
}

template <>
struct Codec<DType::Q4_1> {
    static constexpr int block_bytes = 20, row_alignment = 4;
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + g * block_bytes;
        const uint32_t dm = load_u32(b);
        const float d = half_bits_to_float(uint16_t(dm)), m = half_bits_to_float(uint16_t(dm >> 16));
        const uint32_t q[4] = {load_u32(b + 4), load_u32(b + 8), load_u32(b + 12), load_u32(b + 16)};
        decode_nibble_block([&](int i, int high) { return (q[i] >> (4 * high)) & 0x0f0f0f0fu; },
                            [&](int j, uint32_t v, int k) { out[j] = add_rn(mul_rn(byte_value(v, k, 0.0f), d), m); });
    }
};

template <>
struct Codec<DType::Q5_0> {
    static constexpr int block_bytes = 22, row_alignment = 2;
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + g * block_bytes;
        const float d = half_bits_to_float(uint16_t(load_u16(b)));
        const auto q = load_words<5>(b + 2);  // qh, then qs
        const uint32_t qh = q.w[0];
        // Weight j's fifth bit is bit j of qh (j + 16: bit j + 16), moved to bit 4 of its byte.
        decode_nibble_block(
            [&](int i, int high) {
                return ((q.w[1 + i] >> (4 * high)) & 0x0f0f0f0fu) | (spread_bits4((qh >> (16 * high + 4 * i)) & 15) << 4);
            },
            [&](int j, uint32_t v, int k) { out[j] = mul_rn(byte_value(v, k, 16.0f), d); });
    }
};

template <>
struct Codec<DType::Q5_1> {
    static constexpr int block_bytes = 24, row_alignment = 8;
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + g * block_bytes;
        const uint2 head = load_u64(b), q01 = load_u64(b + 8), q23 = load_u64(b + 16);
        const float d = half_bits_to_float(uint16_t(head.x)), m = half_bits_to_float(uint16_t(head.x >> 16));
        const uint32_t qh = head.y;
        const uint32_t q[4] = {q01.x, q01.y, q23.x, q23.y};
        decode_nibble_block(
            [&](int i, int high) {
                return ((q[i] >> (4 * high)) & 0x0f0f0f0fu) | (spread_bits4((qh >> (16 * high + 4 * i)) & 15) << 4);
            },
            [&](int j, uint32_t v, int k) { out[j] = add_rn(mul_rn(byte_value(v, k, 0.0f), d), m); });
    }
};

// kIQ4NLValues (int8) as four little-endian words, for table16_lookup.
constexpr uint32_t iq4nl_table_word(int w) {
    uint32_t r = 0;
    for (int k = 0; k < 4; ++k) r |= uint32_t(uint8_t(quant::kIQ4NLValues[4 * w + k])) << (8 * k);
    return r;
}
// Four nibbles (one per byte) -> codebook values, then each as a float (signed bytes: +128 bias).
SLUICE_HD uint32_t iq4nl_values_biased(uint32_t nibbles) {
    constexpr uint32_t t0 = iq4nl_table_word(0), t1 = iq4nl_table_word(1), t2 = iq4nl_table_word(2),
                       t3 = iq4nl_table_word(3);
    return table16_lookup(nibbles, t0, t1, t2, t3) ^ 0x80808080u;
}

template <>
struct Codec<DType::IQ4_NL> {
    static constexpr int block_bytes = 18, row_alignment = 2;
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + g * block_bytes;
        const float d = half_bits_to_float(uint16_t(load_u16(b)));
        const auto q = load_words<4>(b + 2);
        decode_nibble_block(
            [&](int i, int high) { return iq4nl_values_biased((q.w[i] >> (4 * high)) & 0x0f0f0f0fu); },
            [&](int j, uint32_t v, int k) { out[j] = mul_rn(d, byte_value(v, k, 128.0f)); });
    }
};

// Super-blocks of 256: group g is sub-group gi = g % 8 of super-block g / 8, columns 32gi.. of it.
//
// Every K-quant group in one integer form, the CPU's fused-dot reading (quant_dot_scalar.cpp):
// unsigned bytes u (< 64) four to a word in weight order, and per half h (weights 16h..16h+15)
// an integer scale s[h] and offset c[h] with w = d*s*u - cd*c. The exact decoders compute the
// CPU dequantiser's own expression from the same fields (ExactForm); the fused GEMV dots u with
// int8 activations.
struct KGroup {
    uint32_t u[8];
    int s[2], c[2];
    float d, cd;
};

// How the CPU dequantiser rounds a K-quant weight: affine (Q2_K, Q4_K, Q5_K):
// (d*s)*u - (cd*c); biased (Q3_K, Q6_K): (d*s)*(u - bias), c = bias*s and cd = d.
template <int Bias>
SLUICE_HD void decode_k(const KGroup& q, float* out) {
SLUICE_UNROLL
    for (int h = 0; h < 2; ++h) {
        const float dl = mul_rn(q.d, float(q.s[h]));
        const float ml = mul_rn(q.cd, float(q.c[h]));
SLUICE_UNROLL
        for (int i = 4 * h; i < 4 * h + 4; ++i)
SLUICE_UNROLL
            for (int k = 0; k < 4; ++k) {
                if constexpr (Bias == 0)
                    out[4 * i + k] = add_rn(mul_rn(dl, byte_value(q.u[i], k, 0.0f)), -ml);
                else
                    out[4 * i + k] = mul_rn(dl, byte_value(q.u[i], k, float(Bias)));
            }
    }
}

// decode() of the K-quants: the unpacked group in the CPU dequantiser's own expression.
template <typename Self>
struct KQuantDecode {
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) { decode_k<Self::bias>(Self::unpack(row, g), out); }
};

// Q2_K / Q3_K: group gi = 4n + j takes 2-bit field j (shift 2j) of the 32 qs bytes of half n;
// weights 0..15 (bytes 0..15) use sub-scale 2gi, weights 16..31 sub-scale 2gi + 1.
template <>
struct Codec<DType::Q2_K> : KQuantDecode<Codec<DType::Q2_K>> {
    static constexpr int block_bytes = 84, row_alignment = 4, bias = 0;
    SLUICE_HD static KGroup unpack(const uint8_t* row, int64_t g) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int gi = int(g % 8), n = gi / 4, shift = 2 * (gi % 4);
        KGroup o;
        const uint8_t* qs = b + 16 + 32 * n;
SLUICE_UNROLL
        for (int i = 0; i < 8; ++i) o.u[i] = (load_u32(qs + 4 * i) >> shift) & 0x03030303u;
        const uint32_t sc = load_u16(b + 2 * gi);  // scales[2gi], scales[2gi + 1]: scale | min << 4
        o.s[0] = int(sc & 15), o.c[0] = int((sc >> 4) & 15);
        o.s[1] = int((sc >> 8) & 15), o.c[1] = int(sc >> 12);
        const uint32_t dd = load_u32(b + 80);
        o.d = half_bits_to_float(uint16_t(dd)), o.cd = half_bits_to_float(uint16_t(dd >> 16));
        return o;
    }
};

template <>
struct Codec<DType::Q3_K> : KQuantDecode<Codec<DType::Q3_K>> {
    static constexpr int block_bytes = 110, row_alignment = 2, bias = 4;
    SLUICE_HD static KGroup unpack(const uint8_t* row, int64_t g) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int gi = int(g % 8), n = gi / 4, j = gi % 4;
        KGroup o;
        // q3 = q2 - 4 unless hmask bit 4n + j is set: u = q2 | bit << 2, weight u - 4.
        const auto hm = load_words<8>(b);
        const auto qs = load_words<8>(b + 32 + 32 * n);
SLUICE_UNROLL
        for (int i = 0; i < 8; ++i)
            o.u[i] = ((qs.w[i] >> (2 * j)) & 0x03030303u) | (((hm.w[i] >> (4 * n + j)) & 0x01010101u) << 2);
        // Sub-scales k0 = 8n + 2j and k0 + 1, 6 bits biased by 32: the low four bits are nibble n of
        // scales[2j] / scales[2j + 1], the high two bits at 2(2n + j/2) in scales[8 + 2(j%2)] / [.. + 1].
        const uint32_t low = load_u16(b + 96 + 2 * j) >> (4 * n);
        const uint32_t high = load_u16(b + 104 + 2 * (j % 2)) >> (2 * (2 * n + j / 2));
        o.s[0] = int((low & 15) | ((high & 3) << 4)) - 32;
        o.s[1] = int(((low >> 8) & 15) | (((high >> 8) & 3) << 4)) - 32;
        o.c[0] = bias * o.s[0], o.c[1] = bias * o.s[1];
        o.d = o.cd = half_bits_to_float(uint16_t(load_u16(b + 108)));
        return o;
    }
};

// Q4_K / Q5_K: the first 16 bytes (one 128-bit load) are d, dmin and the twelve bytes of eight
// 6-bit (scale, min) pairs. Sub-block j: for j < 4 scale = scales[j] & 63, min = scales[j + 4] & 63;
// for j >= 4 the low four bits come from scales[j + 4] and the high two from the top of
// scales[j - 4] / scales[j]. Both halves of a group share sub-block gi's pair.
SLUICE_HD void k4_scale_min(uint4 head, int j, KGroup& o) {
    const uint32_t s0 = head.y, s1 = head.z, s2 = head.w;  // scales[0..3], [4..7], [8..11]
    const int byte = 8 * (j % 4);
    uint32_t sc, mn;
    if (j < 4) {
        sc = (s0 >> byte) & 63;
        mn = (s1 >> byte) & 63;
    } else {
        sc = ((s2 >> byte) & 15) | (((s0 >> byte) >> 6 & 3) << 4);
        mn = ((s2 >> byte) >> 4 & 15) | (((s1 >> byte) >> 6 & 3) << 4);
    }
    o.s[0] = o.s[1] = int(sc);
    o.c[0] = o.c[1] = int(mn);
    o.d = half_bits_to_float(uint16_t(head.x)), o.cd = half_bits_to_float(uint16_t(head.x >> 16));
}

// Chunk c = gi / 2 of qs holds sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles), 32 bytes,
// 16-aligned in both layouts (144 and 176 are multiples of 16).
template <>
struct Codec<DType::Q4_K> : KQuantDecode<Codec<DType::Q4_K>> {
    static constexpr int block_bytes = 144, row_alignment = 16, bias = 0;
    SLUICE_HD static KGroup unpack(const uint8_t* row, int64_t g) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int gi = int(g % 8), shift = 4 * (gi & 1);
        KGroup o;
        k4_scale_min(load_u128(b), gi, o);
        const uint8_t* qs = b + 16 + 32 * (gi / 2);
SLUICE_UNROLL
        for (int v = 0; v < 2; ++v) {
            const uint4 q = load_u128(qs + 16 * v);
            const uint32_t words[4] = {q.x, q.y, q.z, q.w};
SLUICE_UNROLL
            for (int i = 0; i < 4; ++i) o.u[4 * v + i] = (words[i] >> shift) & 0x0f0f0f0fu;
        }
        return o;
    }
};

// As Q4_K, plus a fifth bit for sub-block gi: bit gi of qh[l], weight l of the chunk.
template <>
struct Codec<DType::Q5_K> : KQuantDecode<Codec<DType::Q5_K>> {
    static constexpr int block_bytes = 176, row_alignment = 16, bias = 0;
    SLUICE_HD static KGroup unpack(const uint8_t* row, int64_t g) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int gi = int(g % 8), shift = 4 * (gi & 1);
        KGroup o;
        k4_scale_min(load_u128(b), gi, o);
        const uint8_t* qs = b + 48 + 32 * (gi / 2);
SLUICE_UNROLL
        for (int v = 0; v < 2; ++v) {
            const uint4 q = load_u128(qs + 16 * v), h = load_u128(b + 16 + 16 * v);
            const uint32_t words[4] = {q.x, q.y, q.z, q.w}, high[4] = {h.x, h.y, h.z, h.w};
SLUICE_UNROLL
            for (int i = 0; i < 4; ++i)
                o.u[4 * v + i] = ((words[i] >> shift) & 0x0f0f0f0fu) | (((high[i] >> gi) & 0x01010101u) << 4);
        }
        return o;
    }
};

// Group g = quarter q of half n of its super-block (n = gi / 4, q = gi % 4): outputs
// 128n + 32q + l for l < 32 from ql[64n + 32(q & 1) + l] (nibble q / 2) and qh[32n + l]
// (bits 2q, 2q + 1), minus 32, times d * scales[8n + 2q + l / 16].
template <>
struct Codec<DType::Q6_K> : KQuantDecode<Codec<DType::Q6_K>> {
    static constexpr int block_bytes = 210, row_alignment = 2, bias = 32;
    SLUICE_HD static KGroup unpack(const uint8_t* row, int64_t g) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int gi = int(g % 8), n = gi / 4, q = gi % 4;
        KGroup o;
        const auto ql = load_words<8>(b + 64 * n + 32 * (q & 1));
        const auto qh = load_words<8>(b + 128 + 32 * n);
        const int low_shift = 4 * (q >> 1), high_shift = 2 * q;
SLUICE_UNROLL
        for (int i = 0; i < 8; ++i)
            o.u[i] = ((ql.w[i] >> low_shift) & 0x0f0f0f0fu) | (((qh.w[i] >> high_shift) & 0x03030303u) << 4);
        const uint32_t sc = load_u16(b + 192 + 8 * n + 2 * q);
        o.s[0] = int(int8_t(sc & 0xff)), o.s[1] = int(int8_t(sc >> 8));
        o.c[0] = bias * o.s[0], o.c[1] = bias * o.s[1];
        o.d = o.cd = half_bits_to_float(uint16_t(load_u16(b + 208)));
        return o;
    }
};

// Group g = sub-block ib = g % 8: 6-bit scale ls = nibble ib of scales_l (as one word) | two
// bits 2ib of scales_h, dl = d * (ls - 32); qs[16 ib ..] low nibbles weights 0..15, high 16..31.
template <>
struct Codec<DType::IQ4_XS> {
    static constexpr int block_bytes = 136, row_alignment = 8;
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int ib = int(g % 8);
        const uint2 head = load_u64(b);  // d, scales_h | scales_l[4]
        const float d = half_bits_to_float(uint16_t(head.x));
        const uint32_t ls = ((head.y >> (4 * ib)) & 15) | (((head.x >> (16 + 2 * ib)) & 3) << 4);
        const float dl = mul_rn(d, float(int(ls) - 32));
        const uint2 q01 = load_u64(b + 8 + 16 * ib), q23 = load_u64(b + 16 + 16 * ib);
        const uint32_t q[4] = {q01.x, q01.y, q23.x, q23.y};
        decode_nibble_block(
            [&](int i, int high) { return iq4nl_values_biased((q[i] >> (4 * high)) & 0x0f0f0f0fu); },
            [&](int j, uint32_t v, int k) { out[j] = mul_rn(dl, byte_value(v, k, 128.0f)); });
    }
};

// The types with a Codec, and their dispatch: f(std::integral_constant<DType, T>{}) for such a
// type, false (f not called) for any other. One list for the GEMV, the dequantiser and their tests.
template <DType T>
using TypeTag = std::integral_constant<DType, T>;

template <typename F>
bool visit_quant_type(DType type, F&& f) {
    switch (type) {
        case DType::Q4_0: f(TypeTag<DType::Q4_0>{}); return true;
        case DType::Q4_1: f(TypeTag<DType::Q4_1>{}); return true;
        case DType::Q5_0: f(TypeTag<DType::Q5_0>{}); return true;
        case DType::Q5_1: f(TypeTag<DType::Q5_1>{}); return true;
        case DType::Q8_0: f(TypeTag<DType::Q8_0>{}); return true;
        case DType::Q2_K: f(TypeTag<DType::Q2_K>{}); return true;
        case DType::Q3_K: f(TypeTag<DType::Q3_K>{}); return true;
        case DType::Q4_K: f(TypeTag<DType::Q4_K>{}); return true;
        case DType::Q5_K: f(TypeTag<DType::Q5_K>{}); return true;
        case DType::Q6_K: f(TypeTag<DType::Q6_K>{}); return true;
        case DType::IQ4_NL: f(TypeTag<DType::IQ4_NL>{}); return true;
        case DType::IQ4_XS: f(TypeTag<DType::IQ4_XS>{}); return true;
        default: return false;
    }
}

// Whether `rows` rows of row_bytes each starting at p meet the decoder's load alignment.
template <DType T>
bool rows_meet_alignment(const void* p, int64_t row_bytes) {
    constexpr int a = Codec<T>::row_alignment;
    return (reinterpret_cast<uintptr_t>(p) % a) == 0 && row_bytes % a == 0;
}

// The plain types, for the dequantise kernel: columns past `cols` decode as 0.
template <DType T>
SLUICE_HD float plain_weight(const uint8_t* row, int64_t c) {
    if constexpr (T == DType::F32) return reinterpret_cast<const float*>(row)[c];
    if constexpr (T == DType::F16) return half_bits_to_float(reinterpret_cast<const uint16_t*>(row)[c]);
    if constexpr (T == DType::BF16) return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(row)[c]);
    if constexpr (T == DType::FP8_E4M3_B128) return fp8_e4m3_to_float(row[c]);
    return 0.0f;
}

}  // namespace sluice::cuda::detail

#if !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
