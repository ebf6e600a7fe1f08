// Random but valid weight blocks of the table's types, generated directly in their packed
// layout (no quantiser search), so `sluice synth` can write models larger than RAM at disk
// speed. Every type's values are zero-mean by construction and drawn at a requested std.
#pragma once

#include <cstdint>

#include "kernels/block_type.hpp"

namespace sluice {

// Whether fill_random_blocks knows `type`'s layout: F32, F16, BF16, Q4_0, Q8_0, Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K.
bool random_blocks_supported(DType type);

// How each tensor's values are drawn.
enum class RandomFill {
    gaussian_like,  // zero-mean, standard deviation `std` (uniform in the float types)
    ones,           // every value 1 (norm weights); float types only
};

// Fills `n_blocks` consecutive blocks of `type` at `dst` (block_type(type).block_bytes each;
// for float types a block is one value). Values are a deterministic function of
// (seed, first_block + i), so a tensor may be filled in pieces, in any order, on any thread,
// with the same result as in one call. Zero-mean:
//   signed types (Q4_0, Q8_0, Q3_K, Q6_K): raw quants uniform, scale signs random per
//     block/sub-block, so E[value] = 0;
//   affine K-quants (Q2_K, Q4_K, Q5_K): quants uniform on [0, 2^b) and each sub-block's min
//     set to exactly its scale times (2^b - 1) / 2, so every sub-block is centred on 0.
// fp16 block scales stay finite and normal; a std too small for that throws invalid_input.
void fill_random_blocks(DType type, RandomFill fill, double std, uint64_t seed, uint64_t first_block, void* dst,
                        int64_t n_blocks);

}  // namespace sluice
