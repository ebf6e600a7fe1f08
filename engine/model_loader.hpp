// Opens a model from a path — a Hugging Face directory (config.json + safetensors shards) or a
// GGUF file (the first of a split set) — into its config, layout, plan and tokenizer, and
// optionally reads its weights into memory. The single entry used by every command.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "core/thread_pool.hpp"
#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"
#include "engine/model_weights.hpp"
#include "engine/tensor_source.hpp"
#include "engine/weight_provider.hpp"
#include "formats/model_config.hpp"
#include "formats/chat_template.hpp"
#include "formats/tokenizer.hpp"

namespace sluice {

struct OpenModel {
    std::string path;
    std::string format;  // "safetensors" or "gguf"
    ModelConfig config;
    ModelLayout layout;
    std::unique_ptr<TensorSource> source;
    ModelPlan plan;
    std::optional<Tokenizer> tokenizer;
    ChatTemplateKind chat_template{};
};

// Parses and validates headers and config; reads no weights.
std::unique_ptr<OpenModel> open_model(const std::string& path);

// An open model with every weight in memory.
struct LoadedModel {
    std::unique_ptr<OpenModel> open;
    ModelWeights weights;
    std::unique_ptr<ResidentWeights> provider;

    const ModelLayout& layout() const { return open->layout; }
    const std::optional<Tokenizer>& tokenizer() const { return open->tokenizer; }
};
std::unique_ptr<LoadedModel> load_model(const std::string& path);

}  // namespace sluice
