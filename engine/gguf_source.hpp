// A llama.cpp GGUF model (one file or a split set) as a TensorSource, and what else a GGUF
// alone carries: the deepseek2 hyperparameters as a ModelConfig, and the tokenizer.
#pragma once

#include <unordered_map>

#include "engine/tensor_source.hpp"
#include "formats/gguf.hpp"
#include "formats/model_config.hpp"
#include "formats/tokenizer.hpp"

namespace sluice {

class GgufSource final : public TensorSource {
public:
    explicit GgufSource(gguf::GgufModel model);
    ~GgufSource() override;

    const SourceTensor* find(std::string_view name) const override;
    void read(const SourceTensor& tensor, std::span<std::byte> out) const override;
    std::string describe() const override { return model_.files().paths.front(); }
    const FileSet& files() const override { return model_.files(); }
    const gguf::GgufModel& model() const { return model_; }

private:
    gguf::GgufModel model_;
    std::unordered_map<std::string, SourceTensor> tensors_;
    std::vector<int> fds_;
};

// deepseek2 metadata (spec §3.7) as the typed config; errors name the file and key.
ModelConfig model_config_from_gguf(const gguf::GgufModel& model);
// The tokenizer stored in the metadata (tokens, types, merges, pre-tokenizer name).
Tokenizer tokenizer_from_gguf(const gguf::GgufModel& model);

}  // namespace sluice
