// Scalar dequantisers of ggml's quantised blocks (layouts in quant_blocks.hpp). Each follows the
// same operation order as ggml / gguf-py in f32 (e.g. (d*sc)*q - (dmin*m)), so the result is bit
// identical to gguf-py's `dequantize`; tests/kernels/quant_dequant_test.cpp checks this.
#include <cstring>

#include "core/half.hpp"
#include "kernels/dequantize.hpp"
#include "kernels/quant_blocks.hpp"

// Fused multiply-add would change the rounding of d*q - m versus the reference.
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif

namespace sluice {
namespace {
using namespace quant;

template <typename Block>
const Block* blocks_of(const void* src) { return static_cast<const Block*>(src); }

uint32_t load_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}
}  // namespace

void dequantize_row_q4_0(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ4_0>(src);
    for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
            out[j] = float((b[i].qs[j] & 0xF) - 8) * d;
            out[j + 16] = float((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void dequantize_row_q4_1(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ4_1>(src);
    for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
        const float d = f16_to_f32(b[i].d), m = f16_to_f32(b[i].m);
        for (int j = 0; j < kQK / 2; ++j) {
            out[j] = float(b[i].qs[j] & 0xF) * d + m;
            out[j + 16] = float(b[i].qs[j] >> 4) * d + m;
        }
    }
}

void dequantize_row_q5_0(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ5_0>(src);
    for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
        const float d = f16_to_f32(b[i].d);
        const uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < kQK / 2; ++j) {
            const int h0 = int((qh >> j) << 4) & 0x10, h1 = int(qh >> (j + 12)) & 0x10;
            out[j] = float(((b[i].qs[j] & 0xF) | h0) - 16) * d;
            out[j + 16] = float(((b[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

void dequantize_row_q5_1(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ5_1>(src);
    for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
        const float d = f16_to_f32(b[i].d), m = f16_to_f32(b[i].m);
        const uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < kQK / 2; ++j) {
            const int h0 = int((qh >> j) << 4) & 0x10, h1 = int(qh >> (j + 12)) & 0x10;
            out[j] = float((b[i].qs[j] & 0xF) | h0) * d + m;
            out[j + 16] = float((b[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

void dequantize_row_q8_0(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ8_0>(src);
    for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < kQK; ++j) out[j] = float(b[i].qs[j]) * d;
    }
}

void dequantize_row_q2_k(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ2_K>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = f16_to_f32(b[i].d), dmin = f16_to_f32(b[i].dmin);
        const uint8_t* q = b[i].qs;
        int is = 0;
        for (int half = 0; half < 2; ++half, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int part = 0; part < 2; ++part) {
                    const uint8_t sc = b[i].scales[is++];
                    const float dl = d * float(sc & 0xF), ml = dmin * float(sc >> 4);
                    for (int l = 0; l < 16; ++l)
                        *out++ = dl * float((q[l + 16 * part] >> shift) & 3) - ml;
                }
            }
        }
    }
}

void dequantize_row_q3_k(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ3_K>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = f16_to_f32(b[i].d);
        int8_t scales[16];
        q3_k_scales(b[i].scales, scales);
        const uint8_t* q = b[i].qs;
        uint8_t mask = 1;
        int is = 0;
        for (int half = 0; half < 2; ++half, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, mask = uint8_t(mask << 1)) {
                for (int part = 0; part < 2; ++part) {
                    const float dl = d * float(scales[is++]);
                    for (int l = 0; l < 16; ++l) {
                        const int k = l + 16 * part;
                        const int v = ((q[k] >> shift) & 3) - ((b[i].hmask[k] & mask) ? 0 : 4);
                        *out++ = dl * float(v);
                    }
                }
            }
        }
    }
}

void dequantize_row_q4_k(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ4_K>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = f16_to_f32(b[i].d), dmin = f16_to_f32(b[i].dmin);
        const uint8_t* q = b[i].qs;
        for (int is = 0; is < 8; is += 2, q += 32) {
            uint8_t sc, m;
            k4_scale_min(is, b[i].scales, sc, m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            k4_scale_min(is + 1, b[i].scales, sc, m);
            const float d2 = d * float(sc), m2 = dmin * float(m);
            for (int l = 0; l < 32; ++l) *out++ = d1 * float(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *out++ = d2 * float(q[l] >> 4) - m2;
        }
    }
}

void dequantize_row_q5_k(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ5_K>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = f16_to_f32(b[i].d), dmin = f16_to_f32(b[i].dmin);
        const uint8_t* ql = b[i].qs;
        const uint8_t* qh = b[i].qh;
        unsigned u1 = 1, u2 = 2;
        for (int is = 0; is < 8; is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            k4_scale_min(is, b[i].scales, sc, m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            k4_scale_min(is + 1, b[i].scales, sc, m);
            const float d2 = d * float(sc), m2 = dmin * float(m);
            for (int l = 0; l < 32; ++l)
                *out++ = d1 * float((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l)
                *out++ = d2 * float((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

void dequantize_row_q6_k(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockQ6_K>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = f16_to_f32(b[i].d);
        const uint8_t* ql = b[i].ql;
        const uint8_t* qh = b[i].qh;
        const int8_t* sc = b[i].scales;
        for (int half = 0; half < 2; ++half, out += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                out[l] = (d * float(sc[is + 0])) * float(q1);
                out[l + 32] = (d * float(sc[is + 2])) * float(q2);
                out[l + 64] = (d * float(sc[is + 4])) * float(q3);
                out[l + 96] = (d * float(sc[is + 6])) * float(q4);
            }
        }
    }
}

void dequantize_row_iq4_nl(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockIQ4_NL>(src);
    for (int64_t i = 0; i < n / kQK; ++i, out += kQK) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
            out[j] = d * float(kIQ4NLValues[b[i].qs[j] & 0xF]);
            out[j + 16] = d * float(kIQ4NLValues[b[i].qs[j] >> 4]);
        }
    }
}

void dequantize_row_iq4_xs(const void* src, float* out, int64_t n) {
    const auto* b = blocks_of<BlockIQ4_XS>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = f16_to_f32(b[i].d);
        const uint8_t* qs = b[i].qs;
        for (int ib = 0; ib < 8; ++ib, qs += 16, out += 32) {
            const int ls = ((b[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) |
                           (((b[i].scales_h >> (2 * ib)) & 3) << 4);
            const float dl = d * float(ls - 32);
            for (int j = 0; j < 16; ++j) {
                out[j] = dl * float(kIQ4NLValues[qs[j] & 0xF]);
                out[j + 16] = dl * float(kIQ4NLValues[qs[j] >> 4]);
            }
        }
    }
}

}  // namespace sluice
