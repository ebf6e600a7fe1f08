// Our scalar dequantisers against gguf-py's `dequantize` (fixtures from
// scripts/make_quant_fixtures.py): equal bit for bit, for every implemented quantised type.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kernels/block_type.hpp"

namespace {

std::vector<uint8_t> read_fixture(const std::string& name) {
    const char* dir = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(dir, "SLUICE_TEST_DATA is not set");
    std::ifstream in(std::string(dir) + "/quant/" + name, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "missing fixture ", name);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

}  // namespace

TEST_CASE("every ggml quantised type dequantises bit-identically to gguf-py") {
    using sluice::DType;
    const struct { DType type; const char* file; } cases[] = {
        {DType::Q4_0, "q4_0"}, {DType::Q4_1, "q4_1"}, {DType::Q5_0, "q5_0"},
        {DType::Q5_1, "q5_1"}, {DType::Q8_0, "q8_0"}, {DType::Q2_K, "q2_k"},
        {DType::Q3_K, "q3_k"}, {DType::Q4_K, "q4_k"}, {DType::Q5_K, "q5_k"},
        {DType::Q6_K, "q6_k"}, {DType::IQ4_NL, "iq4_nl"}, {DType::IQ4_XS, "iq4_xs"},
    };
    for (const auto& c : cases) {
        const auto& traits = sluice::block_type(c.type);
        CAPTURE(traits.name);
        REQUIRE(bool(traits.dequantize_row));
        const auto blocks = read_fixture(std::string(c.file) + ".blocks");
        const auto expected_bytes = read_fixture(std::string(c.file) + ".f32");
        REQUIRE(blocks.size() % size_t(traits.block_bytes) == 0);
        const int64_t n_blocks = int64_t(blocks.size()) / traits.block_bytes;
        const int64_t n = n_blocks * traits.block_elems;
        REQUIRE(n_blocks >= 8);
        REQUIRE(expected_bytes.size() == size_t(n) * sizeof(float));
        std::vector<float> expected(static_cast<size_t>(n)), got(static_cast<size_t>(n), -1.0f);
        std::memcpy(expected.data(), expected_bytes.data(), expected_bytes.size());
        traits.dequantize_row(blocks.data(), got.data(), n);
        int64_t mismatches = 0, first = -1;
        for (int64_t i = 0; i < n; ++i) {
            if (bits_of(got[size_t(i)]) != bits_of(expected[size_t(i)])) {
                if (first < 0) first = i;
                ++mismatches;
            }
        }
        if (first >= 0) {
            CAPTURE(first);
            CAPTURE(got[size_t(first)]);
            CAPTURE(expected[size_t(first)]);
            CHECK(mismatches == 0);
        } else {
            CHECK(mismatches == 0);
        }
    }
}

TEST_CASE("a row of several blocks dequantises as its blocks do one by one") {
    // The row entry point must advance block by block: dequantising from block k alone gives
    // the same values as the corresponding slice of the whole row.
    const auto& traits = sluice::block_type(sluice::DType::Q4_K);
    const auto blocks = read_fixture("q4_k.blocks");
    const int64_t n_blocks = int64_t(blocks.size()) / traits.block_bytes;
    std::vector<float> whole(size_t(n_blocks * traits.block_elems)), one(size_t(traits.block_elems));
    traits.dequantize_row(blocks.data(), whole.data(), int64_t(whole.size()));
    for (int64_t k = 0; k < n_blocks; ++k) {
        traits.dequantize_row(blocks.data() + k * traits.block_bytes, one.data(), traits.block_elems);
        CHECK(std::memcmp(one.data(), whole.data() + k * traits.block_elems,
                          one.size() * sizeof(float)) == 0);
    }
}
