#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>

#include "core/half.hpp"

using namespace sluice;

TEST_CASE("f16 round trip is exact for every finite half value") {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        if ((h & 0x7c00) == 0x7c00) continue;  // inf / nan
        const float f = f16_to_f32(uint16_t(h));
        CHECK(f32_to_f16(f) == uint16_t(h));
    }
}

TEST_CASE("f16 conversion rounds to nearest even and saturates to infinity") {
    CHECK(f16_to_f32(f32_to_f16(1.0f + 1.0f / 2048)) == 1.0f);        // tie -> even
    CHECK(f16_to_f32(f32_to_f16(1.0f + 3.0f / 2048)) == 1.0f + 2.0f / 1024);
    CHECK(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
    CHECK(f16_to_f32(f32_to_f16(5.960464477539063e-08f)) == 5.960464477539063e-08f);  // smallest subnormal
}

TEST_CASE("bf16 rounds to nearest even") {
    CHECK(bf16_to_f32(f32_to_bf16(1.0f)) == 1.0f);
    CHECK(f32_to_bf16(1.00390625f) == 0x3f80);   // exactly halfway, rounds to even
    CHECK(f32_to_bf16(1.01171875f) == 0x3f82);   // halfway above odd, rounds up
    CHECK(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}
