#include "formats/openai_stream.hpp"

#include <fmt/format.h>

namespace sluice {

void append_json_string(std::string_view text, std::string& out) {
    static constexpr char kHex[] = "0123456789abcdef";
    out += '"';
    size_t run = 0;  // start of the bytes copied as they are
    for (size_t i = 0; i < text.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        out.append(text.data() + run, i - run);
        run = i + 1;
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                out += "\\u00";
                out += kHex[c >> 4];
                out += kHex[c & 15];
        }
    }
    out.append(text.data() + run, text.size() - run);
    out += '"';
}

OpenAIChunkWriter::OpenAIChunkWriter(BatchEndpoint endpoint, const std::string& id, const std::string& model,
                                     int64_t created, bool include_usage)
    : chat_(endpoint == BatchEndpoint::chat_completions), include_usage_(include_usage) {
    std::string prefix = "data: {\"id\":";
    append_json_string(id, prefix);
    prefix += chat_ ? ",\"object\":\"chat.completion.chunk\"" : ",\"object\":\"text_completion\"";
    prefix += fmt::format(",\"created\":{},\"model\":", created);
    append_json_string(model, prefix);
    prefix += ",\"system_fingerprint\":null,\"choices\":";
    head_ = prefix + "[{\"index\":0,";
    // OpenAI sends "usage": null in every chunk but the last when usage was asked for.
    tail_ = std::string(",\"logprobs\":null,\"finish_reason\":null}]") + (include_usage_ ? ",\"usage\":null" : "") + "}\n\n";
    usage_head_ = prefix + "[],\"usage\":";
}

void OpenAIChunkWriter::role(std::string& out) const {
    out += head_;
    out += "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}";
    out += tail_;
}

void OpenAIChunkWriter::text(std::string_view text, std::string& out) const {
    out += head_;
    out += chat_ ? "\"delta\":{\"content\":" : "\"text\":";
    append_json_string(text, out);
    if (chat_) out += '}';
    out += tail_;
}

void OpenAIChunkWriter::finish(std::string_view reason, std::string& out) const {
    out += head_;
    out += chat_ ? "\"delta\":{}" : "\"text\":\"\"";
    out += ",\"logprobs\":null,\"finish_reason\":";
    append_json_string(reason, out);
    out += "}]";
    if (include_usage_) out += ",\"usage\":null";
    out += "}\n\n";
}

void OpenAIChunkWriter::usage(int64_t prompt_tokens, int64_t completion_tokens, std::string& out) const {
    out += usage_head_;
    out += fmt::format("{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n", prompt_tokens,
                       completion_tokens, prompt_tokens + completion_tokens);
}

void OpenAIChunkWriter::error(std::string_view message, std::string_view type, std::string_view code, std::string& out) {
    out += "data: ";
    out += openai_error_body(message, type, "", code).dump();
    out += "\n\n";
}

void OpenAIChunkWriter::done(std::string& out) { out += "data: [DONE]\n\n"; }

}  // namespace sluice
