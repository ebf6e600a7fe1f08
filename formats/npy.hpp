// NumPy .npy files (format 1.0, little-endian float32, C order): sluice writes logits with
// `run --logits-out` for comparison with other engines, and tests read the oracle's logits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sluice {

struct NpyArray {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

// Reads a float32 (<f4) C-order array; anything else is an invalid_input error naming the file.
NpyArray read_npy_f32(const std::string& path);

// Writes `data` (product(shape) floats) as a float32 C-order array.
void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

}  // namespace sluice
