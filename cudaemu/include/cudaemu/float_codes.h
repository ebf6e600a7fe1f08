// cudaemu: bit-exact conversions between f32 and the narrow float formats, with CUDA's rules:
// round to nearest even, NaN to CUDA's canonical code, e4m3 saturating to +-448 (satfinite).
#pragma once

#include <bit>
#include <cstdint>

namespace cudaemu::codes {

// Rounds mantissa bits m >> shift to nearest even.
constexpr uint32_t round_shift(uint32_t m, int shift) {
    if (shift >= 32) return 0;
    const uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    return r + ((rem > half || (rem == half && (r & 1))) ? 1 : 0);
}

constexpr uint16_t f32_to_f16(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    const uint32_t a = x & 0x7fffffff;
    if (a > 0x7f800000) return 0x7fff;                 // NaN
    if (a >= 0x477ff000) return sign | 0x7c00;         // >= 65520 rounds to infinity
    const int e = int(a >> 23);
    const uint32_t m = (a & 0x7fffff) | 0x800000;
    if (e < 113) return uint16_t(sign | (e < 102 ? 0 : round_shift(m, 126 - e)));  // subnormal or zero
    return uint16_t(sign | round_shift(((uint32_t(e - 112) << 23) | (a & 0x7fffff)), 13));
}

constexpr float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return std::bit_cast<float>(m ? 0x7fffffffu : (sign | 0x7f800000u));
    if (e == 0) {
        const float v = float(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
        return sign ? -v : v;
    }
    return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

constexpr uint16_t f32_to_bf16(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffff) > 0x7f800000) return 0x7fff;
    return uint16_t((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

constexpr float bf16_to_f32(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

constexpr uint8_t f32_to_e4m3(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    const uint8_t sign = uint8_t((x >> 24) & 0x80);
    const uint32_t a = x & 0x7fffffff;
    if (a > 0x7f800000) return 0x7f;
    if (a > 0x43e00000) return sign | 0x7e;  // beyond 448: saturate
    const int e = int(a >> 23);
    if (e < 121) return uint8_t(sign | (e < 116 ? 0 : round_shift((a & 0x7fffff) | 0x800000, 141 - e)));
    return uint8_t(sign | round_shift(((uint32_t(e - 120) << 23) | (a & 0x7fffff)), 20));
}

constexpr float e4m3_to_f32(uint8_t b) {
    const int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return std::bit_cast<float>(0x7fffffffu);
    const float v = e == 0 ? float(m) / 512.0f : float(8 + m) * float(1u << e) / 1024.0f;
    return (b & 0x80) ? -v : v;
}

}  // namespace cudaemu::codes
