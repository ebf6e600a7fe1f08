// What the weight loader needs from a checkpoint, whatever its container: find a tensor by
// its name in that container, know its type and shape, read its bytes. The safetensors
// directory and the GGUF file each provide one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/extent.hpp"
#include "kernels/block_type.hpp"

namespace sluice {

struct SourceTensor {
    std::string name;
    DType type = DType::F32;
    std::vector<int64_t> shape;  // outermost first, as PyTorch writes it ([out, in] for a matrix)
    Extent extent;               // where its bytes lie
};

class TensorSource {
public:
    virtual ~TensorSource() = default;
    // nullptr when the checkpoint has no such tensor.
    virtual const SourceTensor* find(std::string_view name) const = 0;
    // Reads the tensor's bytes (extent.length of them) into `out`.
    virtual void read(const SourceTensor& tensor, std::span<std::byte> out) const = 0;
    // The checkpoint's path, for error messages.
    virtual std::string describe() const = 0;
    virtual const FileSet& files() const = 0;
};

}  // namespace sluice
