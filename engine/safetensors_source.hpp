// A Hugging Face safetensors checkpoint as a TensorSource for the model planner.
#pragma once

#include <unordered_map>

#include "engine/tensor_source.hpp"
#include "formats/safetensors.hpp"

namespace sluice {

class SafetensorsSource final : public TensorSource {
public:
    explicit SafetensorsSource(SafetensorsCheckpoint checkpoint);

    const SourceTensor* find(std::string_view name) const override;
    void read(const SourceTensor& tensor, std::span<std::byte> out) const override;
    std::string describe() const override { return checkpoint_.describe(); }
    const FileSet& files() const override { return checkpoint_.files(); }

private:
    SafetensorsCheckpoint checkpoint_;
    std::unordered_map<std::string, SourceTensor> tensors_;
};

}  // namespace sluice
