#include "engine/openai_prompt.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "formats/chat_template.hpp"
#include "formats/tokenizer.hpp"

namespace sluice {

std::optional<OpenAIPromptError> prepare_openai_prompt(const BatchRequest& r, const OpenModel& model, int64_t context,
                                                       OpenAIPrompt& out) {
    const Tokenizer& tok = *model.tokenizer;
    if (r.endpoint == BatchEndpoint::chat_completions) {
        out.ids = tok.encode(render_chat(r.messages, model.chat_template, true), false);  // the template holds BOS
    } else if (r.prompt_is_ids) {
        out.ids = r.prompt_ids;
        for (int32_t id : out.ids)
            if (id >= model.layout.vocab)
                return OpenAIPromptError{"invalid_value", "prompt",
                                         fmt::format("token id {} is outside the vocabulary of {}", id, model.layout.vocab)};
    } else {
        out.ids = tok.encode(r.prompt, true);
    }
    const int64_t prompt = int64_t(out.ids.size());
    out.max_tokens = r.max_tokens ? *r.max_tokens : context - prompt;
    if (prompt + out.max_tokens > context || out.max_tokens < 1) {
        const int64_t asked = std::max<int64_t>(out.max_tokens, 1);
        return OpenAIPromptError{
            "context_length_exceeded", r.endpoint == BatchEndpoint::chat_completions ? "messages" : "prompt",
            fmt::format("the context is {} tokens; the request asks for {} ({} in the prompt, {} to generate)", context,
                        prompt + asked, prompt, asked)};
    }
    return std::nullopt;
}

}  // namespace sluice
