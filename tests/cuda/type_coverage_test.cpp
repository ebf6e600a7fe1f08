// The device backend covers every weight type the CPU backend reads, and its entry points refuse
// what they cannot read with a typed error naming the operation and the type, before touching
// the device (so this runs, and must pass, on machines without one).
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "core/error.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/quant_dot.hpp"
#include "kernels/cuda/gemm.hpp"
#include "kernels/cuda/gemv.hpp"

using namespace sluice;

TEST_CASE("every weight type the CPU backend multiplies has a device GEMV, and no other") {
    int n_types = 0;
    for (uint32_t id = 0; id < 2000; ++id) {
        const BlockTypeTraits* traits = find_block_type(id);
        if (!traits) continue;
        CAPTURE(traits->name);
        CHECK(cuda::has_gemv_kernel(traits->type) == cpu::has_matmul_kernel(traits->type));
        n_types += cuda::has_gemv_kernel(traits->type);
    }
    CHECK(n_types == 16);  // F32, F16, BF16, FP8 and twelve block types
}

TEST_CASE("the device fuses (int8 activations) exactly the weight types the CPU fuses") {
    for (uint32_t id = 0; id < 2000; ++id) {
        const BlockTypeTraits* traits = find_block_type(id);
        if (!traits) continue;
        CAPTURE(traits->name);
        CHECK(cuda::has_q8_gemv_kernel(traits->type) == cpu::quant_dot_supports(traits->type));
    }
}

TEST_CASE("device gemv and dequantise refuse unknown types and misaligned rows, naming the type") {
    alignas(16) static uint8_t bytes[4096];
    alignas(16) static float x[256], y[16];
    const Matrix iq2{DType::IQ2_XXS, 1, 256, bytes};
    CHECK_THROWS_WITH_AS(cuda::gemv(iq2, x, y, nullptr), doctest::Contains("IQ2_XXS weights: no device kernel"), Error);
    CHECK_THROWS_WITH_AS(cuda::dequantize_to_f32(iq2, y, nullptr), doctest::Contains("IQ2_XXS weights: no device kernel"),
                         Error);
    // Q4_K / Q5_K rows are read in 16-byte vectors, Q5_1 / IQ4_XS in 8-byte ones.
    for (DType type : {DType::Q4_K, DType::Q5_K, DType::Q5_1, DType::IQ4_XS}) {
        CAPTURE(dtype_name(type));
        const Matrix shifted{type, 1, 256, bytes + 4};
        CHECK_THROWS_WITH_AS(cuda::gemv(shifted, x, y, nullptr), doctest::Contains("rows not aligned"), Error);
        CHECK_THROWS_WITH_AS(cuda::dequantize_to_bf16(shifted, y, nullptr), doctest::Contains("rows not aligned"), Error);
    }
}
