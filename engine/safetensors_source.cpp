#include "engine/safetensors_source.hpp"

#include "core/error.hpp"

namespace sluice {

SafetensorsSource::SafetensorsSource(SafetensorsCheckpoint checkpoint) : checkpoint_(std::move(checkpoint)) {
    for (const auto& t : checkpoint_.tensors()) {
        // Tensors in dtypes sluice does not compute in (I64 buffers and the like) stay
        // unlisted; asking for one then reports it missing by name.
        if (!t.dtype) continue;
        tensors_.emplace(t.name, SourceTensor{t.name, *t.dtype, t.shape, t.extent});
    }
}

const SourceTensor* SafetensorsSource::find(std::string_view name) const {
    const auto it = tensors_.find(std::string(name));
    return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsSource::read(const SourceTensor& tensor, std::span<std::byte> out) const {
    SafetensorsTensor t;
    t.name = tensor.name;
    t.extent = tensor.extent;
    checkpoint_.read_tensor(t, out.first(tensor.extent.length));
}

}  // namespace sluice
