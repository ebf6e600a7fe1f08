// A weight matrix as the kernels see it: W [rows = out, cols = in], each row `row_bytes`
// of blocks of `type`, rows contiguous. y = W x. Views into a staging slot, a cache entry or
// a resident arena; never owns memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/block_type.hpp"

namespace sluice {

// A GEMM of independent products over consecutive blocks of a matrix's rows, each with its own
// activations and output place (MLA's per-head products with kv_b: 128 heads of 128-512 rows):
// rows [g rows, (g + 1) rows) of the weights take the activations at x + g x_offset (x_offset 0:
// every group the same) and write at y + g y_offset, as if each were its own call. One call keeps
// the threads on the whole matrix instead of 128 small calls and quantises shared activations once.
struct RowGroups {
    int64_t rows = 0;      // weight rows per group; 0: one group (an ordinary GEMM)
    int64_t x_offset = 0;  // floats from one group's activations to the next's, within a token's row
    int64_t y_offset = 0;  // floats from one group's outputs to the next's, within a token's row
};

struct Matrix {
    DType type = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    const void* data = nullptr;
    // FP8_E4M3_B128 only: scale_inv [ceil(rows/128), ceil(cols/128)] of the whole stored
    // tensor, row-major; row r of this view uses scale row (scale_row_offset + r) / 128.
    const float* block_scales = nullptr;
    int64_t scale_row_offset = 0;

    // The scale of weight (r, c) of this view (FP8 only).
    float block_scale(int64_t r, int64_t c) const {
        return block_scales[((scale_row_offset + r) / 128) * ((cols + 127) / 128) + c / 128];
    }

    int64_t bytes_per_row() const { return row_bytes(type, cols); }
    int64_t bytes() const { return bytes_per_row() * rows; }
    const std::byte* row(int64_t r) const {
        return static_cast<const std::byte*>(data) + r * bytes_per_row();
    }
    // Rows [begin, begin + n) as their own matrix (an expert's slice, a head's block).
    Matrix row_slice(int64_t begin, int64_t n) const {
        Matrix m = *this;
        m.rows = n;
        m.data = row(begin);
        m.scale_row_offset = scale_row_offset + begin;
        return m;
    }
};

}  // namespace sluice
