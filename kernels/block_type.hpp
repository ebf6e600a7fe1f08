// The one table of weight types (ggml ids, plus FP8 block-128 from the official checkpoint):
// block size, bytes per block, name, and the scalar dequantiser. The GGUF reader, the planner's
// byte counts, `sluice inspect` and both backends read this table; none keeps its own list.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace sluice {

// Values are ggml_type ids, so a GGUF tensor's type field converts directly.
enum class DType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    // Not a ggml type: float8 e4m3fn, one byte per weight, with a separate F32 scale per
    // 128x128 block (HF `weight_scale_inv`). Chosen outside ggml's id range.
    FP8_E4M3_B128 = 1000,
};

// Dequantises `n` consecutive weights (a multiple of block_elems) starting at a block boundary.
using DequantizeRowFn = void (*)(const void* blocks, float* out, int64_t n);

struct BlockTypeTraits {
    DType type;
    std::string_view name;     // as ggml / gguf-py spell it
    int32_t block_elems;       // weights per block
    int32_t block_bytes;       // bytes per block
    DequantizeRowFn dequantize_row;  // null where sluice has no kernel for the type yet
};

// nullopt for ids that are not in the table (unknown to sluice).
const BlockTypeTraits* find_block_type(uint32_t ggml_type_id);
const BlockTypeTraits& block_type(DType type);
inline std::string_view dtype_name(DType type) { return block_type(type).name; }

// Bytes of one row of `n_cols` weights; the row length must be a multiple of the block.
int64_t row_bytes(DType type, int64_t n_cols);
bool row_fits_blocks(DType type, int64_t n_cols);

}  // namespace sluice
