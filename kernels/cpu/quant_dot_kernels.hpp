// Internal to the fused quantised dots: the per-path kernel tables quant_dot.cpp dispatches on.
// One "row group" call is one weight row against up to token_group tokens' activations (at most
// kMaxTokenGroup), so each weight block is unpacked once and used for every token of the group.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/quantize_activations.hpp"

namespace sluice::cpu::quant_kernels {

inline constexpr int kMaxTokenGroup = 16;

// A grow-only scratch vector grown to exactly `n` entries (resize alone may take up to twice what
// it needs), so the memory planner's count (quant_gemm_scratch_bytes) is what is held.
template <typename T> T* grown(std::vector<T>& v, size_t n) {
    if (v.size() < n) {
        v.reserve(n);
        v.resize(n);
    }
    return v.data();
}

// sums[t] = dot(weight row w of n_blocks blocks, activations acts[t]) for t < n_tok. Blocks are
// the weight type's own (32 elements for Q8_0 / Q4_0, 256-element super-blocks for K-quants), and
// acts[t] points at that token's ActivationGroupQ8 (32-element types) or ActivationBlockQ8K array;
// either way 320 bytes of activations per 256 columns, so a column chunk starting at a multiple of
// 256 starts at a whole activation group.
using RowGroupFn = void (*)(const void* w, int64_t n_blocks, const void* const* acts, int n_tok, float* sums);

// The activation quantisers, bit-identical on every path (the same d, 1/d, and round-to-nearest-even).
using QuantizeQ8Fn = void (*)(const float* x, ActivationGroupQ8* out, int64_t n);
using QuantizeQ8KFn = void (*)(const float* x, ActivationBlockQ8K* out, int64_t n);

// sums[4 * t + r] = dot(row r of four rows starting at w, row_bytes apart, acts[t]): one call
// shares each super-block's scales among four rows (see quad_rows in quant_dot_avx512.cpp).
using QuadRowGroupFn = void (*)(const void* w, int64_t row_bytes, int64_t n_blocks, const void* const* acts,
                                int n_tok, float* sums);

// Sixteen rows per call, from a tile of 16 rows the caller has repacked once (Q4_K, Q5_K, Q6_K, Q8_0 on AVX-512; see
// quant_dot_avx512.cpp): repack_16 turns n entries (super-blocks, or four Q8_0 blocks) of rows w, w + row_bytes, ...,
// w + 15 row_bytes into n PackedBlock16 entries; rows_16 takes n of them against up
// to token_group tokens: sums[16 * t + r] = dot(row r, acts[t]). While it computes, rows_16 asks for
// `prefetch` (the part of the next tile this call is given) to be brought into L2, a few lines per
// super-block: the repack reads a tile as 16 strided streams, and from DRAM (weights fresh from the
// disk) that ran 2.5x slower than from cache; spread over the previous tile's arithmetic the reads
// overlap it (a burst of them at once, or into L1, made it slower still). Only the first pass over
// the blocks prefetches.
struct alignas(64) PackedBlock16 {
    uint8_t bytes[4096];  // the larger of the types' layouts (Q6_K's)
};
using Repack16Fn = void (*)(const void* w, int64_t row_bytes, int64_t n_blocks, PackedBlock16* packed);
struct PrefetchLines {
    const uint8_t* first = nullptr;  // 64-byte aligned
    int64_t lines = 0;
};
using Rows16Fn = void (*)(const PackedBlock16* packed, int64_t n_blocks, const void* const* acts, int n_tok,
                          float* sums, PrefetchLines prefetch);
struct SixteenRows {
    Repack16Fn repack = nullptr;
    Rows16Fn rows = nullptr;
    // weight blocks per PackedBlock16 entry: 1 for the K-quants (a super-block), 4 for Q8_0; repack and
    // rows count entries, so a row takes sixteen rows only where it is whole entries
    int64_t blocks_per_entry = 1;
};

struct RowGroupTable {
    int token_group;  // tokens per call: as many as the path's registers hold accumulators for
    RowGroupFn q8_0, q4_0, q2_k, q3_k, q4_k, q5_k, q6_k;
    QuantizeQ8Fn quantize_q8;
    QuantizeQ8KFn quantize_q8k;
    // four rows per call, where the path has them (K-quants on AVX-512); Q6_K's sums each row's
    // integer dot and offset before the float steps, so it is also the AMX path's Q6_K kernel for
    // few tokens, bit-identical to its tile kernels
    QuadRowGroupFn q2_k_quad = nullptr, q3_k_quad = nullptr, q4_k_quad = nullptr, q5_k_quad = nullptr,
                   q6_k_quad = nullptr;
    // Q4_K four rows per call in that form (AVX-512): the AMX path's Q4_K kernel for few tokens
    QuadRowGroupFn q4_k_quad_row_sums = nullptr;
    // tokens per four-row call (0: token_group): more than a row group's, since four rows share
    // the unpacking of each super-block and the accumulators may live in memory
    int quad_token_group = 0;
    // sixteen rows per call from a repacked tile, where the path has it (Q4_K, Q5_K, Q6_K, Q8_0 on AVX-512)
    SixteenRows q4_k_16 = {}, q5_k_16 = {}, q6_k_16 = {}, q8_0_16 = {};
};

const RowGroupTable& scalar_row_groups();
const RowGroupTable& avx2_row_groups();
const RowGroupTable& avx512_vnni_row_groups();
const RowGroupTable& avx512_vnni_gfni_row_groups();  // bit fields extracted with vgf2p8affineqb

}  // namespace sluice::cpu::quant_kernels
