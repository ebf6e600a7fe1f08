// The emulator's half, bfloat16 and fp8 e4m3 conversions against an independent oracle: the
// nearest representable value found by search over every code (ties to the even code), with
// CUDA's overflow rules (f16/bf16: to infinity; e4m3 satfinite: to +-448).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

// Positive finite codes in increasing value, and their values.
struct Table {
    std::vector<uint32_t> codes;
    std::vector<double> values;
};

template <typename Decode>
Table positive_codes(uint32_t n_codes, Decode decode) {
    Table t;
    for (uint32_t c = 0; c < n_codes; ++c) {
        const double v = decode(c);
        if (std::isfinite(v) && !std::signbit(v)) {
            t.codes.push_back(c);
            t.values.push_back(v);
        }
    }
    return t;
}

// The code of the representable value nearest |x| (ties: even code); `overflow` when |x| is at
// or past the midpoint above the largest value (`top_next`: the value one step above the largest).
uint32_t nearest(const Table& t, double x, double top_next, uint32_t overflow) {
    const double a = std::fabs(x);
    if (a >= (t.values.back() + top_next) / 2) {
        if (a > (t.values.back() + top_next) / 2 || (t.codes.back() & 1)) return overflow;
    }
    auto it = std::lower_bound(t.values.begin(), t.values.end(), a);
    if (it == t.values.end()) return t.codes.back();  // above the largest, below the midpoint
    const size_t hi = size_t(it - t.values.begin());
    if (hi == 0 || t.values[hi] == a) return t.codes[hi];
    const double dl = a - t.values[hi - 1], dh = t.values[hi] - a;
    if (dl < dh) return t.codes[hi - 1];
    if (dh < dl) return t.codes[hi];
    return (t.codes[hi] & 1) ? t.codes[hi - 1] : t.codes[hi];
}

std::vector<float> samples() {
    std::mt19937 rng(3);
    std::vector<float> v;
    for (int i = 0; i < 200000; ++i) {
        const float f = std::bit_cast<float>(uint32_t(rng()));
        if (std::isfinite(f)) v.push_back(f);
    }
    std::uniform_real_distribution<float> small(-500.0f, 500.0f), tiny(-1e-3f, 1e-3f);
    for (int i = 0; i < 100000; ++i) {
        v.push_back(small(rng));
        v.push_back(tiny(rng));
    }
    for (float f : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 448.0f, 464.0f, 1e-8f, 5.9604645e-08f, 2.9802322e-08f})
        v.push_back(f);
    return v;
}

}  // namespace

TEST_CASE("float -> half rounds to the nearest half (ties to even), overflowing to infinity; half -> float is exact") {
    const Table t = positive_codes(0x7c00, [](uint32_t c) { return double(__half2float(__ushort_as_half(uint16_t(c)))); });
    REQUIRE(t.values.size() == 0x7c00);
    CHECK(t.values[1] == std::ldexp(1.0, -24));
    CHECK(t.values.back() == 65504.0);
    int bad = 0;
    for (float f : samples()) {
        const uint32_t want = nearest(t, f, 65536.0, 0x7c00) | (std::signbit(f) ? 0x8000u : 0u);
        if (__half_as_ushort(__float2half_rn(f)) != want && bad++ < 5) MESSAGE("f16 of " << f);
    }
    CHECK(bad == 0);
    CHECK(__half_as_ushort(__float2half(std::numeric_limits<float>::quiet_NaN())) == 0x7fff);
    CHECK(std::isinf(__half2float(__ushort_as_half(0x7c00))));
}

TEST_CASE("float -> bfloat16 rounds to the nearest (ties to even); bfloat16 -> float is exact") {
    const Table t = positive_codes(0x7f80, [](uint32_t c) { return double(__bfloat162float(__ushort_as_bfloat16(uint16_t(c)))); });
    int bad = 0;
    for (float f : samples()) {
        const uint32_t want = nearest(t, f, std::ldexp(1.0, 128), 0x7f80) | (std::signbit(f) ? 0x8000u : 0u);
        if (__bfloat16_as_ushort(__float2bfloat16_rn(f)) != want && bad++ < 5) MESSAGE("bf16 of " << f);
    }
    CHECK(bad == 0);
    CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(std::numeric_limits<float>::quiet_NaN())) == 0x7fff);
}

TEST_CASE("float -> fp8 e4m3 rounds to the nearest (ties to even) and saturates to 448") {
    const Table t = positive_codes(0x7f, [](uint32_t c) {
        __nv_fp8_e4m3 v;
        v.__x = uint8_t(c);
        return double(float(v));
    });
    REQUIRE(t.values.size() == 0x7f);
    CHECK(t.values.back() == 448.0);
    CHECK(t.values[1] == std::ldexp(1.0, -9));
    int bad = 0;
    for (float f : samples()) {
        const uint32_t want = nearest(t, f, 480.0, 0x7e) | (std::signbit(f) ? 0x80u : 0u);
        if (__nv_fp8_e4m3(f).__x != want && bad++ < 5) MESSAGE("e4m3 of " << f);
    }
    CHECK(bad == 0);
    CHECK(std::isnan(float(__nv_fp8_e4m3(std::numeric_limits<float>::quiet_NaN()))));
}
