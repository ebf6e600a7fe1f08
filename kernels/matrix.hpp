// A weight matrix as the kernels see it: W [rows = out, cols = in], each row `row_bytes`
// of blocks of `type`, rows contiguous. y = W x. Views into a staging slot, a cache entry or
// a resident arena; never owns memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/block_type.hpp"

namespace sluice {

struct Matrix {
    DType type = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    const void* data = nullptr;
    // FP8_E4M3_B128 only: scale_inv [ceil(rows/128), ceil(cols/128)], row-major.
    const float* block_scales = nullptr;

    int64_t bytes_per_row() const { return row_bytes(type, cols); }
    int64_t bytes() const { return bytes_per_row() * rows; }
    const std::byte* row(int64_t r) const {
        return static_cast<const std::byte*>(data) + r * bytes_per_row();
    }
    // Rows [begin, begin + n) as their own matrix (an expert's slice, a head's block).
    // For FP8 the slice must start on a 128-row block boundary.
    Matrix row_slice(int64_t begin, int64_t n) const {
        Matrix m = *this;
        m.rows = n;
        m.data = row(begin);
        if (block_scales) m.block_scales = block_scales + (begin / 128) * ((cols + 127) / 128);
        return m;
    }
};

}  // namespace sluice
