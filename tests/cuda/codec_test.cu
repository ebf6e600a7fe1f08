// The CUDA block decoders (kernels/cuda/quant_codecs.cuh), run on the host: every block type the
// device reads against gguf-py's dequantiser, bit for bit (the fixtures of
// scripts/make_quant_fixtures.py: blocks from gguf-py's quantiser and random-byte blocks with
// signed scales), and the FP8 / F16 / BF16 widenings against the CPU backend's. Runs everywhere
// nvcc builds, device or not.
#include <doctest/doctest.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/half.hpp"
#include "kernels/cuda/quant_codecs.cuh"
#include "kernels/dequantize.hpp"

using namespace sluice;

namespace {

std::vector<char> read_fixture(const std::string& name) {
    const char* dir = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(dir != nullptr, "SLUICE_TEST_DATA is not set");
    std::ifstream in(std::string(dir) + "/quant/" + name, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "missing fixture " << name);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// A type's fixture: its blocks as one row placed `offset` bytes past a 16-byte boundary (the
// decoders of 2-byte-aligned types must read rows that start 2 mod 4 too: a row of an odd number
// of 18-byte blocks ends so), and gguf-py's values of them.
struct FixtureRow {
    std::vector<uint4> storage;
    const uint8_t* row;
    std::vector<float> want;
};

template <DType T>
FixtureRow fixture_row(int offset) {
    std::string name(dtype_name(T));
    for (auto& ch : name) ch = char(std::tolower(ch));
    const auto blocks = read_fixture(name + ".blocks");
    const auto values_bytes = read_fixture(name + ".f32");
    FixtureRow f;
    f.want.resize(values_bytes.size() / 4);
    std::memcpy(f.want.data(), values_bytes.data(), f.want.size() * 4);
    REQUIRE(int64_t(blocks.size()) == row_bytes(T, int64_t(f.want.size())));
    f.storage.resize((blocks.size() + 16 + 15) / 16);
    auto* row = reinterpret_cast<uint8_t*>(f.storage.data()) + offset;
    std::memcpy(row, blocks.data(), blocks.size());
    f.row = row;
    return f;
}

template <DType T>
void check_against_gguf(int offset) {
    const FixtureRow f = fixture_row<T>(offset);
    int bad = 0;
    for (size_t g = 0; g < f.want.size() / 32; ++g) {
        float got[32];
        cuda::detail::Codec<T>::decode(f.row, int64_t(g), got);
        for (int j = 0; j < 32; ++j) {
            const float w = f.want[g * 32 + size_t(j)];
            if (bits_of(got[j]) != bits_of(w) && bad++ < 5)
                MESSAGE("weight " << g * 32 + size_t(j) << ": got " << got[j] << " want " << w);
        }
    }
    CHECK(bad == 0);
}

template <DType T>
void check_type() {
    CAPTURE(dtype_name(T));
    for (int offset = 0; offset < 16; offset += cuda::detail::Codec<T>::row_alignment) {
        CAPTURE(offset);
        check_against_gguf<T>(offset);
    }
}

}  // namespace

TEST_CASE("every device block decoder reproduces gguf's dequantisation bit for bit, at every row alignment it accepts") {
    int n_types = 0;
    for (uint32_t id = 0; id < 64; ++id) {
        const BlockTypeTraits* traits = find_block_type(id);
        if (!traits || traits->block_elems == 1) continue;
        const bool has_codec = cuda::detail::visit_quant_type(traits->type, [&](auto type_tag) {
            check_type<decltype(type_tag)::value>();
        });
        // Every block type the CPU reads must have a device decoder too.
        CHECK_MESSAGE(has_codec == (traits->dequantize_row != nullptr), traits->name);
        n_types += has_codec;
    }
    CHECK(n_types == 12);
}

// The fused GEMV reads K-quant groups as w = d*s*u - cd*c (Q3_K / Q6_K: c and cd only there), and
// Q8_0 / Q4_0 blocks as d * (signed byte) / d * (nibble - 8): that form gives gguf's weights too.
template <DType T>
void check_integer_form() {
    CAPTURE(dtype_name(T));
    const FixtureRow f = fixture_row<T>(0);
    int bad = 0;
    for (size_t g = 0; g < f.want.size() / 32; ++g) {
        const auto q = cuda::detail::Codec<T>::unpack(f.row, int64_t(g));
        for (int j = 0; j < 32; ++j) {
            const int byte = int((q.u[j / 4] >> (8 * (j % 4))) & 0xff);
            double w, magnitude;
            if constexpr (T == DType::Q8_0 || T == DType::Q4_0) {
                const int v = T == DType::Q8_0 ? int(int8_t(byte)) : byte - 8;
                w = magnitude = double(q.d) * v;
            } else {
                const double a = double(q.d) * q.s[j / 16] * byte, b = double(q.cd) * q.c[j / 16];
                w = a - b;
                magnitude = std::fabs(a) + std::fabs(b);
            }
            const float want = f.want[g * 32 + size_t(j)];
            if (!(std::fabs(w - want) <= 1e-6 * std::fabs(magnitude)) && bad++ < 5)
                MESSAGE("weight " << g * 32 + size_t(j) << ": integer form " << w << " want " << want);
        }
    }
    CHECK(bad == 0);
}

TEST_CASE("the integer form the fused GEMV reads reproduces gguf's weights (Q8_0, Q4_0, Q2_K..Q6_K)") {
    check_integer_form<DType::Q8_0>();
    check_integer_form<DType::Q4_0>();
    check_integer_form<DType::Q2_K>();
    check_integer_form<DType::Q3_K>();
    check_integer_form<DType::Q4_K>();
    check_integer_form<DType::Q5_K>();
    check_integer_form<DType::Q6_K>();
}

TEST_CASE("the 2-aligned word loader gives the bytes' little-endian words at either alignment") {
    alignas(16) uint8_t buf[32];
    for (int offset : {2, 4, 6}) {
        std::memset(buf, 0xEE, sizeof buf);
        for (int i = 0; i < 16; ++i) buf[offset + i] = uint8_t(i + 1);
        const auto got = cuda::detail::load_words<4>(buf + offset);
        for (int k = 0; k < 4; ++k) {
            uint32_t want;
            std::memcpy(&want, buf + offset + 4 * k, 4);
            CHECK(got.w[k] == want);
        }
    }
}

TEST_CASE("the host byte_perm picks bytes as CUDA documents __byte_perm") {
    CHECK(cuda::detail::byte_perm(0x33221100u, 0x77665544u, 0x3210) == 0x33221100u);
    CHECK(cuda::detail::byte_perm(0x33221100u, 0x77665544u, 0x7654) == 0x77665544u);
    CHECK(cuda::detail::byte_perm(0x33221100u, 0x77665544u, 0x0415) == 0x00441155u);
    CHECK(cuda::detail::byte_perm(0xddccbbaau, 0x11223344u, 0x7440 | 2) == 0x114444ccu);  // byte_value's selector
}

TEST_CASE("the device FP8 e4m3 widening equals the CPU table for every non-NaN code") {
    for (int b = 0; b < 256; ++b) {
        if ((b & 0x7f) == 0x7f) continue;  // NaN codes: never in weights
        CAPTURE(b);
        CHECK(cuda::detail::fp8_e4m3_to_float(uint8_t(b)) == fp8_e4m3_to_f32(uint8_t(b)));
    }
}

TEST_CASE("the device F16 and BF16 widenings equal the CPU's") {
    for (uint32_t h = 0; h < 65536; h += 7) {
        const float cpu_f16 = f16_to_f32(uint16_t(h));
        const float dev_f16 = cuda::detail::half_bits_to_float(uint16_t(h));
        if (std::isnan(cpu_f16)) {
            CHECK(std::isnan(dev_f16));
        } else {
            CHECK(dev_f16 == cpu_f16);
        }
        const float cpu_bf16 = bf16_to_f32(uint16_t(h));
        const float dev_bf16 = cuda::detail::bf16_bits_to_float(uint16_t(h));
        if (std::isnan(cpu_bf16)) {
            CHECK(std::isnan(dev_bf16));
        } else {
            CHECK(dev_bf16 == cpu_bf16);
        }
    }
}
