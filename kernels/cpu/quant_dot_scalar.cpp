// The scalar reference of the fused quantised dots (quant_dot.hpp): portable, and the statement
// of what the SIMD paths compute. Every K-quant super-block is read as 256 unsigned weights u, one
// integer scale per 16 elements s[k], an offset term per 16 c[k], and two f16 factors d, cd:
//   dot = d * da * sum_k s[k] * sum_{i in k} u_i a_i  -  cd * da * sum_k c[k] * sum_{i in k} a_i
// where da and a_i are the Q8_K activation scale and int8 values, and sum_{i in k} a_i is bsums[k].
#include <cstring>

#include "core/half.hpp"
#include "kernels/cpu/quant_dot_kernels.hpp"
#include "kernels/quant_blocks.hpp"

namespace sluice::cpu::quant_kernels {
namespace {

using namespace sluice::quant;

struct SuperBlock {
    uint8_t u[256];
    int16_t s[16];
    int16_t c[16];
    float d, cd;
};

// Q2_K: u = 2-bit q, w = d*(sc&15)*u - dmin*(sc>>4), one scale byte per 16.
void unpack(const BlockQ2_K& b, SuperBlock& o) {
    for (int i = 0; i < 256; ++i) {
        const int half = i / 128, shift = 2 * ((i % 128) / 32), l = i % 32;
        o.u[i] = uint8_t((b.qs[32 * half + l] >> shift) & 3);
    }
    for (int k = 0; k < 16; ++k) {
        o.s[k] = int16_t(b.scales[k] & 0xF);
        o.c[k] = int16_t(b.scales[k] >> 4);
    }
    o.d = f16_to_f32(b.d);
    o.cd = f16_to_f32(b.dmin);
}

// Q3_K: w = d*s*(q2 + 4*hbit - 4) with signed 6-bit s; u = q2 + 4*hbit in [0, 7], c = 4*s.
void unpack(const BlockQ3_K& b, SuperBlock& o) {
    for (int i = 0; i < 256; ++i) {
        const int half = i / 128, j = (i % 128) / 32, l = i % 32;
        const int q2 = (b.qs[32 * half + l] >> (2 * j)) & 3;
        const int hbit = (b.hmask[l] >> (4 * half + j)) & 1;
        o.u[i] = uint8_t(q2 + 4 * hbit);
    }
    int8_t sc[16];
    q3_k_scales(b.scales, sc);
    for (int k = 0; k < 16; ++k) {
        o.s[k] = sc[k];
        o.c[k] = int16_t(4 * sc[k]);
    }
    o.d = o.cd = f16_to_f32(b.d);
}

// Q4_K: 8 sub-blocks of 32 with 6-bit scale and min, w = d*sc*u - dmin*m.
void unpack(const BlockQ4_K& b, SuperBlock& o) {
    for (int i = 0; i < 256; ++i) o.u[i] = uint8_t((b.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF);
    for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        k4_scale_min(j, b.scales, sc, m);
        o.s[2 * j] = o.s[2 * j + 1] = sc;
        o.c[2 * j] = o.c[2 * j + 1] = m;
    }
    o.d = f16_to_f32(b.d);
    o.cd = f16_to_f32(b.dmin);
}

// Q5_K: Q4_K plus a fifth bit, bit (i / 32) of qh[i % 32].
void unpack(const BlockQ5_K& b, SuperBlock& o) {
    for (int i = 0; i < 256; ++i) {
        const int low = (b.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
        o.u[i] = uint8_t(low | (((b.qh[i % 32] >> (i / 32)) & 1) << 4));
    }
    for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        k4_scale_min(j, b.scales, sc, m);
        o.s[2 * j] = o.s[2 * j + 1] = sc;
        o.c[2 * j] = o.c[2 * j + 1] = m;
    }
    o.d = f16_to_f32(b.d);
    o.cd = f16_to_f32(b.dmin);
}

// Q6_K: w = d*s*(u - 32), u 6 bits from a ql nibble and a 2-bit slice of qh; int8 scale per 16.
void unpack(const BlockQ6_K& b, SuperBlock& o) {
    for (int i = 0; i < 256; ++i) {
        const int h = i / 128, c = (i % 128) / 32, l = i % 32;
        const uint8_t* ql = b.ql + 64 * h;
        const int nib = c < 2 ? ql[l + 32 * c] & 0xF : ql[l + 32 * (c - 2)] >> 4;
        o.u[i] = uint8_t(nib | (((b.qh[32 * h + l] >> (2 * c)) & 3) << 4));
    }
    for (int k = 0; k < 16; ++k) {
        o.s[k] = b.scales[k];
        o.c[k] = int16_t(32 * b.scales[k]);
    }
    o.d = o.cd = f16_to_f32(b.d);
}

template <typename Block>
void row_group_k(const void* wv, int64_t n_sb, const void* const* acts, int n_tok, float* sums) {
    const auto* w = static_cast<const Block*>(wv);
    float acc[kMaxTokenGroup] = {};
    SuperBlock sb;
    for (int64_t i = 0; i < n_sb; ++i) {
        unpack(w[i], sb);
        for (int t = 0; t < n_tok; ++t) {
            const ActivationBlockQ8K& a = static_cast<const ActivationBlockQ8K*>(acts[t])[i];
            int32_t dot = 0, offset = 0;
            for (int k = 0; k < 16; ++k) {
                int32_t part = 0;
                for (int e = 16 * k; e < 16 * k + 16; ++e) part += int32_t(sb.u[e]) * a.qs[e];
                dot += int32_t(sb.s[k]) * part;
                offset += int32_t(sb.c[k]) * a.bsums[k];
            }
            acc[t] += sb.d * a.d * float(dot) - sb.cd * a.d * float(offset);
        }
    }
    for (int t = 0; t < n_tok; ++t) sums[t] = acc[t];
}

inline void signed_weights(const BlockQ8_0& b, int8_t out[32]) { std::memcpy(out, b.qs, 32); }
inline void signed_weights(const BlockQ4_0& b, int8_t out[32]) {
    for (int i = 0; i < 16; ++i) {
        out[i] = int8_t((b.qs[i] & 0xF) - 8);
        out[i + 16] = int8_t((b.qs[i] >> 4) - 8);
    }
}

template <typename Block>
void row_group_32(const void* wv, int64_t n_blocks, const void* const* acts, int n_tok, float* sums) {
    const auto* w = static_cast<const Block*>(wv);
    float acc[kMaxTokenGroup] = {};
    int8_t wq[32];
    for (int64_t b = 0; b < n_blocks; ++b) {
        signed_weights(w[b], wq);
        const float dw = f16_to_f32(w[b].d);
        for (int t = 0; t < n_tok; ++t) {
            const ActivationGroupQ8& a = static_cast<const ActivationGroupQ8*>(acts[t])[b / 8];
            const int slot = int(b % 8);
            int32_t s = 0;
            for (int i = 0; i < 32; ++i) s += int32_t(wq[i]) * int32_t(a.qs[slot][i]);
            acc[t] += float(s) * (dw * a.d[slot]);
        }
    }
    for (int t = 0; t < n_tok; ++t) sums[t] = acc[t];
}

}  // namespace

const RowGroupTable& scalar_row_groups() {
    static const RowGroupTable table{4, row_group_32<BlockQ8_0>, row_group_32<BlockQ4_0>, row_group_k<BlockQ2_K>,
                                     row_group_k<BlockQ3_K>,  row_group_k<BlockQ4_K>,   row_group_k<BlockQ5_K>,
                                     row_group_k<BlockQ6_K>, quantize_activations_q8, quantize_activations_q8k};
    return table;
}

}  // namespace sluice::cpu::quant_kernels
