// The CUDA block decoders (kernels/cuda/quant_codecs.cuh), run on the host: Q8_0 / Q4_K / Q6_K
// against gguf's dequantiser (fixture from scripts/make_cuda_quant_fixture.py) and the FP8 / F16
// / BF16 widenings against the CPU backend's. Runs everywhere nvcc builds, device or not.
#include <doctest/doctest.h>

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
    std::ifstream in(std::string(dir) + "/cuda_quant/" + name, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "missing fixture " << name);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

template <DType T>
void check_against_gguf(const char* name) {
    const auto blocks = read_fixture(std::string(name) + ".blocks");
    const auto values_bytes = read_fixture(std::string(name) + ".f32");
    const size_t n = values_bytes.size() / 4;
    std::vector<float> want(n);
    std::memcpy(want.data(), values_bytes.data(), n * 4);
    REQUIRE(int64_t(blocks.size()) == row_bytes(T, int64_t(n)));
    // The decoders read 16-byte vectors from Q4_K rows: give the row the alignment device memory has.
    std::vector<uint4> aligned((blocks.size() + 15) / 16);
    std::memcpy(aligned.data(), blocks.data(), blocks.size());
    const auto* row = reinterpret_cast<const uint8_t*>(aligned.data());
    int bad = 0;
    for (size_t g = 0; g < n / 32; ++g) {
        float got[32];
        cuda::detail::Codec<T>::decode(row, int64_t(g), got);
        for (int j = 0; j < 32; ++j) {
            const float w = want[g * 32 + size_t(j)];
            if (!(std::fabs(got[j] - w) <= 1e-6f * std::fabs(w) + 1e-7f) && bad++ < 5)
                MESSAGE("weight " << g * 32 + size_t(j) << ": got " << got[j] << " want " << w);
        }
    }
    CHECK(bad == 0);
}

}  // namespace

TEST_CASE("the device Q8_0 decoder reproduces gguf's dequantisation") { check_against_gguf<DType::Q8_0>("q8_0"); }
TEST_CASE("the device Q4_K decoder reproduces gguf's dequantisation") { check_against_gguf<DType::Q4_K>("q4_k"); }
TEST_CASE("the device Q6_K decoder reproduces gguf's dequantisation") { check_against_gguf<DType::Q6_K>("q6_k"); }

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
