// An OpenAI request's prompt as token ids for one model and context: chat messages through the
// model's chat template, text through its tokenizer, or ids as given; and how many tokens it may
// generate. Shared by sluice batch and sluice serve, so both front ends see the same prompt.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/model_loader.hpp"
#include "formats/openai_batch.hpp"

namespace sluice {

struct OpenAIPrompt {
    std::vector<int32_t> ids;
    int64_t max_tokens = 0;  // max_tokens as asked, else what the context leaves
};

// Why a request cannot run, in OpenAI's terms.
struct OpenAIPromptError {
    std::string code;     // invalid_value | context_length_exceeded
    std::string param;
    std::string message;
};

// The prompt, or why the request cannot run on `model` within `context` positions.
std::optional<OpenAIPromptError> prepare_openai_prompt(const BatchRequest& request, const OpenModel& model,
                                                       int64_t context, OpenAIPrompt& out);

}  // namespace sluice
