// Device decoders for the stored weight formats (spec §3.9), one group of 32 consecutive weights
// of a row at a time: the unit both the GEMV (one group per lane) and the dequantise-for-GEMM
// kernels work in. Group g of a row covers columns [32g, 32g + 32).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/block_type.hpp"

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

SLUICE_HD uint16_t load_u16(const uint8_t* p) {
    return *reinterpret_cast<const uint16_t*>(p);  // every u16 field in these blocks is 2-aligned
}

template <DType T>
struct Codec;

template <>
struct Codec<DType::Q8_0> {
    static constexpr int block_bytes = 34;
    // Group g = block g.
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + g * block_bytes;
        const float d = half_bits_to_float(load_u16(b));
        const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
SLUICE_UNROLL
        for (int j = 0; j < 32; ++j) out[j] = d * float(qs[j]);
    }
};

template <>
struct Codec<DType::Q4_K> {
    static constexpr int block_bytes = 144;
    // Group g = sub-block j = g % 8 of block g / 8: chunk c = j / 2, low nibbles for even j.
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int j = int(g % 8);
        const float d = half_bits_to_float(load_u16(b));
        const float dmin = half_bits_to_float(load_u16(b + 2));
        const uint8_t* scales = b + 4;
        int sc, mn;
        if (j < 4) {
            sc = scales[j] & 63;
            mn = scales[j + 4] & 63;
        } else {
            sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4);
            mn = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        }
        const float dl = d * float(sc), ml = dmin * float(mn);
        // qs chunk is 16-byte aligned when the row is (144 = 9 * 16, qs at +16).
        const uint4* qs = reinterpret_cast<const uint4*>(b + 16 + 32 * (j / 2));
        const int shift = (j & 1) * 4;
SLUICE_UNROLL
        for (int v = 0; v < 2; ++v) {
            const uint4 q = qs[v];
            const uint32_t words[4] = {q.x, q.y, q.z, q.w};
SLUICE_UNROLL
            for (int w = 0; w < 4; ++w)
SLUICE_UNROLL
                for (int k = 0; k < 4; ++k)
                    out[16 * v + 4 * w + k] = dl * float((words[w] >> (8 * k + shift)) & 15) - ml;
        }
    }
};

template <>
struct Codec<DType::Q6_K> {
    static constexpr int block_bytes = 210;
    // Group g = quarter q of half n of block g / 8 (n = (g % 8) / 4, q = g % 4): outputs
    // 128n + 32q + l for l < 32, scale index 8n + l/16 + 2q.
    SLUICE_HD static void decode(const uint8_t* row, int64_t g, float* out) {
        const uint8_t* b = row + (g / 8) * block_bytes;
        const int n = int(g % 8) / 4, q = int(g % 4);
        const uint8_t* ql = b + 64 * n + 32 * (q & 1);
        const uint8_t* qh = b + 128 + 32 * n;
        const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192 + 8 * n + 2 * q);
        const float d = half_bits_to_float(load_u16(b + 208));
        const float d0 = d * float(scales[0]), d1 = d * float(scales[1]);
        const int low_shift = (q >> 1) * 4, high_shift = 2 * q;
SLUICE_UNROLL
        for (int l = 0; l < 32; ++l) {
            const int v = ((ql[l] >> low_shift) & 15) | (((qh[l] >> high_shift) & 3) << 4);
            out[l] = (l < 16 ? d0 : d1) * float(v - 32);
        }
    }
};

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
