// The OpenAI Batch API's files: one request per input line ({custom_id, method, url, body}) and
// one record per output line ({id, custom_id, response: {status_code, request_id, body}, error}),
// for /v1/chat/completions and /v1/completions. A line that cannot be served becomes an error
// record (status 400 and an OpenAI error body naming the line and the reason), as OpenAI's own
// error files carry them. Every id is a function of the input, so a resumed or sharded job writes
// the same bytes as one uninterrupted run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/chat_template.hpp"

namespace sluice {

enum class BatchEndpoint { chat_completions, completions };
const char* batch_endpoint_url(BatchEndpoint endpoint);

struct BatchRequest {
    int64_t line = 0;                    // 1-based line of the input file
    std::string custom_id;
    BatchEndpoint endpoint = BatchEndpoint::chat_completions;
    std::string model;                   // body.model, echoed in the response when given
    std::vector<ChatMessage> messages;   // chat
    std::string prompt;                  // completions, text
    std::vector<int32_t> prompt_ids;     // completions, given as token ids
    bool prompt_is_ids = false;
    std::optional<int64_t> max_tokens;   // max_completion_tokens, else max_tokens
    double temperature = 1.0;            // OpenAI's default
    double top_p = 1.0;
    std::optional<int64_t> seed;
    std::vector<std::string> stop;       // up to 4 sequences
    bool ignore_eos = false;             // extension (vLLM, llama.cpp): generate max_tokens whatever
    bool stream = false;                 // HTTP only (sluice serve): server-sent events
    bool stream_include_usage = false;   // stream_options.include_usage: a last chunk with usage
};

// Why a line or a request cannot be served.
struct BatchLineError {
    int64_t line = 0;
    std::string custom_id;  // empty when the line has no usable one
    std::string code;       // OpenAI-style: invalid_json, missing_required_parameter, ...
    std::string param;      // the field at fault; empty when none
    std::string message;    // starts with "line N: "
};

// Exactly one of request / error, or neither for a blank line.
struct ParsedBatchLine {
    std::optional<BatchRequest> request;
    std::optional<BatchLineError> error;
};
ParsedBatchLine parse_batch_line(std::string_view text, int64_t line);

// The JSON body of one HTTP request to `endpoint` (sluice serve): the fields of a batch line's
// body, and `stream` / `stream_options`. On error, line is 0 and the message has no line prefix.
ParsedBatchLine parse_openai_request(std::string_view body, BatchEndpoint endpoint);

BatchLineError batch_line_error(int64_t line, std::string custom_id, std::string code, std::string param,
                                std::string_view reason);

// The 64-bit FNV-1a hash of custom_id: `--shard i/N` keeps the requests with hash % N == i, and
// output ids derive from it. Stable across versions and machines (part of the file contract).
uint64_t batch_custom_id_hash(std::string_view custom_id);

// The output record id of a request ("batch_req_" + 16 hex digits of the custom_id hash), and of
// a line that has no usable or unique custom_id (derived from its line number and bytes).
std::string batch_request_record_id(std::string_view custom_id);
std::string batch_line_record_id(int64_t line, std::string_view raw);

struct BatchCompletion {
    std::string record_id;
    std::string custom_id;
    BatchEndpoint endpoint = BatchEndpoint::chat_completions;
    std::string model;
    std::string text;
    std::string finish_reason;  // stop | length
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;
    int64_t created = 0;        // unix seconds
};

// The chat.completion / text_completion object of a finished request, keys in OpenAI's order;
// `id` is its "chatcmpl-..." / "cmpl-..." id.
nlohmann::ordered_json openai_completion_body(const BatchCompletion& completion, const std::string& id);
// An OpenAI error object: {"error": {message, type, param, code}} (param null when empty).
nlohmann::ordered_json openai_error_body(std::string_view message, std::string_view type, std::string_view param,
                                         std::string_view code);

// One output line (no trailing newline), keys in OpenAI's order.
std::string batch_success_line(const BatchCompletion& completion);
std::string batch_error_line(const std::string& record_id, const BatchLineError& error);

// The id and custom_id of an output line; nullopt when the line is not an output record.
struct BatchRecordKey {
    std::string id;
    std::string custom_id;  // empty for null
};
std::optional<BatchRecordKey> parse_batch_record_key(std::string_view line);

}  // namespace sluice
