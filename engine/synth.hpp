// Writes a Hugging Face model directory with the DeepSeek-V3 architecture and random weights
// (config.json, safetensors shards, a copy of the real tokenizer): the model every demo and
// test can run without a download. Weights are generated and written one chunk at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/model_config.hpp"
#include "formats/safetensors.hpp"

namespace sluice {

// "tiny" (tests), "small" (the demo default), "v3" (DeepSeek-V3 671B shapes, unquantised).
// All use vocab_size 129280 so the real DeepSeek-V3 tokenizer fits. Error(invalid_input) otherwise.
ModelConfig synth_preset(std::string_view name);

// Every tensor of an HF DeepSeek-V3/V2 checkpoint for `config` (names and PyTorch shapes), in
// forward order: embed, layers 0.., MTP layers, final norm, lm_head. Weights take
// `weight_dtype` ("F32" or "BF16"); the router correction bias stays F32 as in the release.
std::vector<SafetensorsTensorSpec> synth_tensor_specs(const ModelConfig& config, std::string_view weight_dtype);

struct SynthOptions {
    ModelConfig config;
    std::filesystem::path output_dir;
    std::string weight_dtype = "BF16";  // "F32" or "BF16"
    uint64_t seed = 0;
    // A directory with tokenizer.json (+ tokenizer_config.json); nullopt writes no tokenizer.
    std::optional<std::filesystem::path> tokenizer_dir;
    // A shard is closed before it would grow past this; one shard => model.safetensors.
    uint64_t max_shard_bytes = 4ull << 30;
};

struct SynthSummary {
    size_t n_tensors = 0;
    size_t n_shards = 0;
    uint64_t data_bytes = 0;
    uint64_t n_parameters = 0;
};

// Writes the directory (created if needed; existing model files in it are replaced).
SynthSummary write_synthetic_model(const SynthOptions& options);

// The standard deviation synth draws a tensor's values with (0 for norms, which are all 1):
// 1/sqrt(fan_in) for projections so activations stay O(1), 1 for the embedding.
double synth_weight_std(const SafetensorsTensorSpec& spec);

// The DeepSeek-V3 tokenizer shipped beside the checkout (shared/models/deepseek-v3-tokenizer),
// looked for from $SLUICE_SHARED and from the ancestors of `start` (e.g. the binary's path).
std::optional<std::filesystem::path> find_default_tokenizer(const std::filesystem::path& start);

}  // namespace sluice
