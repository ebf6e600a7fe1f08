// Text generation for one sequence: prefill the prompt, then decode token by token until EOS
// or a token budget, handing each new token to the caller as it is produced.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/deepseek_v3.hpp"
#include "engine/sampler.hpp"

namespace sluice {

struct GenerateOptions {
    int64_t max_new_tokens = 64;
    SamplerOptions sampler;
    bool stop_at_eos = true;
    // When set, receives the logits of every prompt position: [prompt, vocab].
    std::vector<float>* prompt_logits = nullptr;
};

struct GenerateStats {
    int64_t n_prompt = 0;
    int64_t n_generated = 0;
    double prompt_seconds = 0;
    double generate_seconds = 0;
    bool stopped_at_eos = false;
    double prompt_tokens_per_s() const { return prompt_seconds > 0 ? double(n_prompt) / prompt_seconds : 0; }
    double generate_tokens_per_s() const {
        return generate_seconds > 0 ? double(n_generated) / generate_seconds : 0;
    }
};

// on_token(id) is called for each generated token (the EOS token too, before stopping).
GenerateStats generate(DeepseekForward& model, std::span<const int32_t> prompt, const GenerateOptions& options,
                       const std::function<void(int32_t)>& on_token);

}  // namespace sluice
