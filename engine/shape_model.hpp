// A model known from its dimensions alone: the DeepSeek-V3 family's tensors exactly as `sluice
// synth -o X.gguf` would write them (any layer and expert count, any quantisation mix), planned
// into segments with no file behind them, so `sluice plan` can size a full 671B model that is not
// on this machine. The plan's extents are where the bytes would lie in such a GGUF; reading them
// gives random blocks of the tensor's type as `sluice synth` draws them (norms 1, projections at
// 1/sqrt(fan-in)), so a few layers of the shapes can be loaded and timed on this machine.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "engine/model_loader.hpp"
#include "engine/synth_gguf.hpp"
#include "kernels/block_type.hpp"

namespace sluice {

struct ShapeModelOptions {
    std::string preset = "v3";            // synth_preset: tiny | small | v3
    std::optional<int> layers;            // as `sluice synth`: --layers, --dense-layers, --experts
    std::optional<int> dense_layers;
    std::optional<int64_t> experts;
    // A llama.cpp file type whose per-tensor rules to apply (llama_tensor_get_type for deepseek2):
    //   "q4_k_m": Q4_K; ffn_down* Q6_K in the layers use_more_bits picks (i < n/8, i >= 7n/8, every
    //             third between), output Q6_K;
    //   "q2_k":   Q2_K (token_embd too); ffn_down* and attn_output Q3_K; output Q6_K.
    // Empty: the types below, one per role, as `sluice synth` takes them.
    std::string mix;
    DType expert_type = DType::Q4_K;
    DType dense_type = DType::Q4_K;
    DType embed_type = DType::Q4_K;
    DType head_type = DType::Q6_K;
};

// Config, layout and plan of the shapes (format "shapes"; no tokenizer). Errors (invalid_input)
// name the unknown preset or mix, or a tensor whose rows do not fit its type's blocks.
std::unique_ptr<OpenModel> open_shape_model(const ShapeModelOptions& options);

// The same for an explicit config: `types` gives synth's types by role, and `retype`, when set,
// the type of each tensor from synth's description of it. What the compute probe loads and times.
std::unique_ptr<OpenModel> open_shape_model(const ModelConfig& config, const GgufSynthOptions& types,
                                            const std::function<DType(const GgufSynthTensor&)>& retype,
                                            const std::string& name);

}  // namespace sluice
