// A streamed completion in OpenAI's server-sent events: chat.completion.chunk or text_completion
// objects as `data: {...}` events, ending with `data: [DONE]`. The parts of an event that do not
// change (id, object, created, model) are rendered once per request, so a token's event is a copy
// and an escape into the caller's buffer, with no allocation once that buffer has grown.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "formats/openai_batch.hpp"

namespace sluice {

// `text` as a quoted JSON string (valid UTF-8 in; control characters, quote and backslash escaped).
void append_json_string(std::string_view text, std::string& out);

class OpenAIChunkWriter {
public:
    OpenAIChunkWriter(BatchEndpoint endpoint, const std::string& id, const std::string& model, int64_t created,
                      bool include_usage);
    // Chat only: the first event, the assistant's role with empty content.
    void role(std::string& out) const;
    // A piece of generated text.
    void text(std::string_view text, std::string& out) const;
    // The event that ends the choice (stop | length), with no text.
    void finish(std::string_view reason, std::string& out) const;
    // The usage event (no choices), sent last when stream_options.include_usage asked for it.
    void usage(int64_t prompt_tokens, int64_t completion_tokens, std::string& out) const;
    // An error in the middle of a stream: {"error": {...}} (the openai client raises it).
    static void error(std::string_view message, std::string_view type, std::string_view code, std::string& out);
    static void done(std::string& out);
    bool include_usage() const { return include_usage_; }

private:
    bool chat_;
    bool include_usage_;
    std::string head_;         // data: {"id":...,"choices":[{"index":0,
    std::string tail_;         // ,"logprobs":null,"finish_reason":null}]...}\n\n  (a text event)
    std::string usage_head_;   // data: {"id":...,"choices":[],"usage":
};

}  // namespace sluice
