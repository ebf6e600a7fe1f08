#include "kernels/block_type.hpp"

#include <array>

#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/dequantize.hpp"

namespace sluice {

namespace {

constexpr std::array kTable = {
    BlockTypeTraits{DType::F32, "F32", 1, 4, dequantize_row_f32},
    BlockTypeTraits{DType::F16, "F16", 1, 2, dequantize_row_f16},
    BlockTypeTraits{DType::Q4_0, "Q4_0", 32, 18, dequantize_row_q4_0},
    BlockTypeTraits{DType::Q4_1, "Q4_1", 32, 20, dequantize_row_q4_1},
    BlockTypeTraits{DType::Q5_0, "Q5_0", 32, 22, dequantize_row_q5_0},
    BlockTypeTraits{DType::Q5_1, "Q5_1", 32, 24, dequantize_row_q5_1},
    BlockTypeTraits{DType::Q8_0, "Q8_0", 32, 34, dequantize_row_q8_0},
    BlockTypeTraits{DType::Q8_1, "Q8_1", 32, 36, nullptr},
    BlockTypeTraits{DType::Q2_K, "Q2_K", 256, 84, dequantize_row_q2_k},
    BlockTypeTraits{DType::Q3_K, "Q3_K", 256, 110, dequantize_row_q3_k},
    BlockTypeTraits{DType::Q4_K, "Q4_K", 256, 144, dequantize_row_q4_k},
    BlockTypeTraits{DType::Q5_K, "Q5_K", 256, 176, dequantize_row_q5_k},
    BlockTypeTraits{DType::Q6_K, "Q6_K", 256, 210, dequantize_row_q6_k},
    BlockTypeTraits{DType::Q8_K, "Q8_K", 256, 292, nullptr},
    BlockTypeTraits{DType::IQ2_XXS, "IQ2_XXS", 256, 66, nullptr},
    BlockTypeTraits{DType::IQ2_XS, "IQ2_XS", 256, 74, nullptr},
    BlockTypeTraits{DType::IQ3_XXS, "IQ3_XXS", 256, 98, nullptr},
    BlockTypeTraits{DType::IQ1_S, "IQ1_S", 256, 50, nullptr},
    BlockTypeTraits{DType::IQ4_NL, "IQ4_NL", 32, 18, dequantize_row_iq4_nl},
    BlockTypeTraits{DType::IQ3_S, "IQ3_S", 256, 110, nullptr},
    BlockTypeTraits{DType::IQ2_S, "IQ2_S", 256, 82, nullptr},
    BlockTypeTraits{DType::IQ4_XS, "IQ4_XS", 256, 136, dequantize_row_iq4_xs},
    BlockTypeTraits{DType::I8, "I8", 1, 1, nullptr},
    BlockTypeTraits{DType::I16, "I16", 1, 2, nullptr},
    BlockTypeTraits{DType::I32, "I32", 1, 4, nullptr},
    BlockTypeTraits{DType::I64, "I64", 1, 8, nullptr},
    BlockTypeTraits{DType::F64, "F64", 1, 8, nullptr},
    BlockTypeTraits{DType::IQ1_M, "IQ1_M", 256, 56, nullptr},
    BlockTypeTraits{DType::BF16, "BF16", 1, 2, dequantize_row_bf16},
    // FP8 rows carry no scales of their own: the 128x128 scale grid is a separate tensor, so
    // the row dequantiser yields fp8 values unscaled (the matmul applies scale_inv).
    BlockTypeTraits{DType::FP8_E4M3_B128, "FP8_E4M3_B128", 1, 1, dequantize_row_fp8_e4m3},
};

}  // namespace

const BlockTypeTraits* find_block_type(uint32_t id) {
    for (const auto& t : kTable)
        if (uint32_t(t.type) == id) return &t;
    return nullptr;
}

const BlockTypeTraits& block_type(DType type) {
    const auto* t = find_block_type(uint32_t(type));
    if (!t) fail(ErrorKind::internal, "block type id {} is not in the table", uint32_t(type));
    return *t;
}

bool row_fits_blocks(DType type, int64_t n_cols) { return n_cols % block_type(type).block_elems == 0; }

int64_t row_bytes(DType type, int64_t n_cols) {
    const auto& t = block_type(type);
    return n_cols / t.block_elems * t.block_bytes;
}

}  // namespace sluice
