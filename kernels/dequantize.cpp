#include "kernels/dequantize.hpp"

#include <array>
#include <cmath>
#include <cstring>

#include "core/half.hpp"

namespace sluice {

void dequantize_row_f32(const void* src, float* out, int64_t n) {
    std::memcpy(out, src, size_t(n) * sizeof(float));
}

void dequantize_row_f16(const void* src, float* out, int64_t n) {
    const auto* h = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(h[i]);
}

void dequantize_row_bf16(const void* src, float* out, int64_t n) {
    const auto* h = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(h[i]);
}

namespace {
// e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities; S.1111.111 is NaN.
std::array<float, 256> make_fp8_table() {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) {
        const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
        float v;
        if (e == 0) v = float(m) * std::ldexp(1.0f, -9);
        else if (e == 15 && m == 7) v = std::nanf("");
        else v = (1.0f + float(m) / 8.0f) * std::ldexp(1.0f, e - 7);
        t[size_t(b)] = s ? -v : v;
    }
    return t;
}
const std::array<float, 256> kFp8Table = make_fp8_table();
}  // namespace

float fp8_e4m3_to_f32(uint8_t byte) { return kFp8Table[byte]; }

void dequantize_row_fp8_e4m3(const void* src, float* out, int64_t n) {
    const auto* b = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n; ++i) out[i] = kFp8Table[b[i]];
}

}  // namespace sluice
