#include "formats/openai_batch.hpp"

#include <fmt/format.h>

#include <limits>

namespace sluice {

namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

uint64_t fnv1a(std::string_view bytes, uint64_t h = 14695981039346656037ull) {
    for (unsigned char c : bytes) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

// Thrown inside the parser only, caught in parse_batch_line.
struct Reject {
    std::string code, param, reason;
};

[[noreturn]] void reject(std::string code, std::string param, std::string reason) {
    throw Reject{std::move(code), std::move(param), std::move(reason)};
}

const Json* field(const Json& object, const char* name) {
    const auto it = object.find(name);
    return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::string text_content(const Json& content, const std::string& param) {
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) reject("invalid_type", param, "content must be a string or an array of text parts");
    std::string text;
    for (const auto& part : content) {
        const Json* type = part.is_object() ? field(part, "type") : nullptr;
        if (!type || !type->is_string() || type->get<std::string>() != "text")
            reject("unsupported_value", param, "only text content parts are supported");
        const Json* t = field(part, "text");
        if (!t || !t->is_string()) reject("invalid_type", param, "a text part needs a string 'text'");
        text += t->get<std::string>();
    }
    return text;
}

std::optional<int64_t> positive_int(const Json& body, const char* name) {
    const Json* v = field(body, name);
    if (!v) return std::nullopt;
    if (!v->is_number_integer() || v->get<int64_t>() < 1)
        reject("invalid_value", name, fmt::format("{} must be a positive integer", name));
    return v->get<int64_t>();
}

double number_in(const Json& body, const char* name, double fallback, double low, double high, bool open_low) {
    const Json* v = field(body, name);
    if (!v) return fallback;
    if (!v->is_number()) reject("invalid_type", name, fmt::format("{} must be a number", name));
    const double x = v->get<double>();
    if (x > high || x < low || (open_low && x == low))
        reject("invalid_value", name, fmt::format("{} must be in {}{}, {}]", name, open_low ? "(" : "[", low, high));
    return x;
}

// `http`: the body of a request to sluice serve, which may stream; else a batch line's body.
void parse_body(const Json& body, BatchRequest& r, bool http) {
    if (const Json* m = field(body, "model")) {
        if (!m->is_string()) reject("invalid_type", "model", "model must be a string");
        r.model = m->get<std::string>();
    }
    if (r.endpoint == BatchEndpoint::chat_completions) {
        const Json* messages = field(body, "messages");
        if (!messages) reject("missing_required_parameter", "messages", "body.messages is required");
        if (!messages->is_array() || messages->empty())
            reject("invalid_type", "messages", "messages must be a non-empty array");
        for (size_t i = 0; i < messages->size(); ++i) {
            const Json& m = (*messages)[i];
            const std::string param = fmt::format("messages[{}]", i);
            if (!m.is_object()) reject("invalid_type", param, "a message must be an object");
            const Json* role = field(m, "role");
            if (!role || !role->is_string()) reject("missing_required_parameter", param + ".role", "a message needs a role");
            const std::string name = role->get<std::string>();
            if (name != "system" && name != "user" && name != "assistant" && name != "developer")
                reject("unsupported_value", param + ".role", fmt::format("role '{}' is not supported", name));
            const Json* content = field(m, "content");
            if (!content) reject("missing_required_parameter", param + ".content", "a message needs content");
            // OpenAI's "developer" role is the newer name of "system".
            r.messages.push_back({name == "developer" ? "system" : name, text_content(*content, param + ".content")});
        }
    } else {
        const Json* prompt = field(body, "prompt");
        if (!prompt) reject("missing_required_parameter", "prompt", "body.prompt is required");
        if (prompt->is_string()) {
            r.prompt = prompt->get<std::string>();
        } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
            r.prompt = (*prompt)[0].get<std::string>();
        } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number_integer()) {
            r.prompt_is_ids = true;
            for (const auto& id : *prompt) {
                if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
                    reject("invalid_value", "prompt", "a token-id prompt must hold non-negative integers");
                r.prompt_ids.push_back(int32_t(id.get<int64_t>()));
            }
        } else {
            reject("unsupported_value", "prompt", "prompt must be a string or one array of token ids (one prompt per request)");
        }
        if (!r.prompt_is_ids && r.prompt.empty()) reject("invalid_value", "prompt", "the prompt is empty");
    }
    r.max_tokens = positive_int(body, "max_completion_tokens");
    if (!r.max_tokens) r.max_tokens = positive_int(body, "max_tokens");
    r.temperature = number_in(body, "temperature", 1.0, 0.0, 2.0, false);
    r.top_p = number_in(body, "top_p", 1.0, 0.0, 1.0, true);
    if (const Json* seed = field(body, "seed")) {
        if (!seed->is_number_integer()) reject("invalid_type", "seed", "seed must be an integer");
        r.seed = seed->get<int64_t>();
    }
    if (const Json* stop = field(body, "stop")) {
        if (stop->is_string()) {
            r.stop.push_back(stop->get<std::string>());
        } else if (stop->is_array() && stop->size() <= 4) {
            for (const auto& s : *stop) {
                if (!s.is_string()) reject("invalid_type", "stop", "stop sequences must be strings");
                r.stop.push_back(s.get<std::string>());
            }
        } else {
            reject("invalid_type", "stop", "stop must be a string or an array of up to 4 strings");
        }
        for (const auto& s : r.stop)
            if (s.empty()) reject("invalid_value", "stop", "a stop sequence cannot be empty");
    }
    if (const Json* n = field(body, "n"); n && !(n->is_number_integer() && n->get<int64_t>() == 1))
        reject("unsupported_value", "n", "only n = 1 is supported");
    if (const Json* stream = field(body, "stream")) {
        if (!stream->is_boolean()) reject("invalid_type", "stream", "stream must be a boolean");
        if (stream->get<bool>() && !http) reject("unsupported_value", "stream", "a batch request cannot stream");
        r.stream = stream->get<bool>();
    }
    if (const Json* options = field(body, "stream_options")) {
        if (!options->is_object()) reject("invalid_type", "stream_options", "stream_options must be an object");
        if (!r.stream) reject("invalid_value", "stream_options", "stream_options is only allowed with stream: true");
        if (const Json* usage = field(*options, "include_usage")) {
            if (!usage->is_boolean()) reject("invalid_type", "stream_options", "include_usage must be a boolean");
            r.stream_include_usage = usage->get<bool>();
        }
    }
    for (const char* name : {"frequency_penalty", "presence_penalty"})
        if (const Json* v = field(body, name); v && !(v->is_number() && v->get<double>() == 0.0))
            reject("unsupported_value", name, fmt::format("{} is not supported", name));
    if (const Json* v = field(body, "logprobs"); v && !(v->is_boolean() && !v->get<bool>()))
        reject("unsupported_value", "logprobs", "logprobs are not supported");
    // Fields that would change the answer are refused rather than ignored: a client that asks for
    // them must not get text produced without them.
    if (const Json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty()))
        reject("unsupported_value", "logit_bias", "logit_bias is not supported");
    if (const Json* v = field(body, "tools"); v && !(v->is_array() && v->empty()))
        reject("unsupported_value", "tools", "tools (function calling) are not supported");
    if (const Json* v = field(body, "response_format")) {
        const Json* type = v->is_object() ? field(*v, "type") : nullptr;
        if (!(type && type->is_string() && type->get<std::string>() == "text"))
            reject("unsupported_value", "response_format", "only response_format {\"type\": \"text\"} is supported");
    }
    if (const Json* v = field(body, "ignore_eos")) {
        if (!v->is_boolean()) reject("invalid_type", "ignore_eos", "ignore_eos must be a boolean");
        r.ignore_eos = v->get<bool>();
    }
}

std::string hex16(uint64_t h) { return fmt::format("{:016x}", h); }

}  // namespace

const char* batch_endpoint_url(BatchEndpoint endpoint) {
    return endpoint == BatchEndpoint::chat_completions ? "/v1/chat/completions" : "/v1/completions";
}

BatchLineError batch_line_error(int64_t line, std::string custom_id, std::string code, std::string param,
                                std::string_view reason) {
    return {line, std::move(custom_id), std::move(code), std::move(param), fmt::format("line {}: {}", line, reason)};
}

ParsedBatchLine parse_batch_line(std::string_view text, int64_t line) {
    ParsedBatchLine out;
    if (text.find_first_not_of(" \t\r") == std::string_view::npos) return out;
    const Json root = Json::parse(text.begin(), text.end(), nullptr, false);
    if (root.is_discarded()) {
        out.error = batch_line_error(line, "", "invalid_json", "", "not valid JSON");
        return out;
    }
    std::string custom_id;
    try {
        if (!root.is_object()) reject("invalid_request", "", "a request line must be a JSON object");
        const Json* id = field(root, "custom_id");
        if (!id) reject("missing_required_parameter", "custom_id", "custom_id is required");
        if (!id->is_string() || id->get<std::string>().empty())
            reject("invalid_type", "custom_id", "custom_id must be a non-empty string");
        custom_id = id->get<std::string>();
        BatchRequest r;
        r.line = line;
        r.custom_id = custom_id;
        const Json* method = field(root, "method");
        if (!method) reject("missing_required_parameter", "method", "method is required");
        if (!method->is_string() || method->get<std::string>() != "POST")
            reject("invalid_value", "method", "method must be POST");
        const Json* url = field(root, "url");
        if (!url) reject("missing_required_parameter", "url", "url is required");
        const std::string u = url->is_string() ? url->get<std::string>() : url->dump();
        if (u == "/v1/chat/completions") r.endpoint = BatchEndpoint::chat_completions;
        else if (u == "/v1/completions") r.endpoint = BatchEndpoint::completions;
        else reject("invalid_url", "url", fmt::format("url '{}' is not /v1/chat/completions or /v1/completions", u));
        const Json* body = field(root, "body");
        if (!body) reject("missing_required_parameter", "body", "body is required");
        if (!body->is_object()) reject("invalid_type", "body", "body must be an object");
        parse_body(*body, r, false);
        out.request = std::move(r);
    } catch (const Reject& e) {
        out.error = batch_line_error(line, custom_id, e.code, e.param, e.reason);
    }
    return out;
}

ParsedBatchLine parse_openai_request(std::string_view text, BatchEndpoint endpoint) {
    ParsedBatchLine out;
    const Json body = Json::parse(text.begin(), text.end(), nullptr, false);
    if (body.is_discarded()) {
        out.error = BatchLineError{0, "", "invalid_json", "", "the request body is not valid JSON"};
        return out;
    }
    try {
        if (!body.is_object()) reject("invalid_type", "", "the request body must be a JSON object");
        BatchRequest r;
        r.endpoint = endpoint;
        parse_body(body, r, true);
        out.request = std::move(r);
    } catch (const Reject& e) {
        out.error = BatchLineError{0, "", e.code, e.param, e.reason};
    }
    return out;
}

uint64_t batch_custom_id_hash(std::string_view custom_id) { return fnv1a(custom_id); }

std::string batch_request_record_id(std::string_view custom_id) {
    return "batch_req_" + hex16(batch_custom_id_hash(custom_id));
}

std::string batch_line_record_id(int64_t line, std::string_view raw) {
    return "batch_req_" + hex16(fnv1a(raw, fnv1a(fmt::format("line {}\n", line))));
}

std::string batch_success_line(const BatchCompletion& c) {
    const std::string suffix = c.record_id.substr(c.record_id.find_last_of('_') + 1);
    const OrderedJson body = openai_completion_body(
        c, (c.endpoint == BatchEndpoint::chat_completions ? "chatcmpl-" : "cmpl-") + suffix);
    OrderedJson record = {{"id", c.record_id},
                          {"custom_id", c.custom_id},
                          {"response", {{"status_code", 200}, {"request_id", "req_" + suffix}, {"body", body}}},
                          {"error", nullptr}};
    // Invalid UTF-8 in generated text (a token cut mid-character) is replaced, never an exception.
    return record.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

OrderedJson openai_completion_body(const BatchCompletion& c, const std::string& id) {
    OrderedJson usage = {{"prompt_tokens", c.prompt_tokens},
                         {"completion_tokens", c.completion_tokens},
                         {"total_tokens", c.prompt_tokens + c.completion_tokens}};
    OrderedJson body;
    if (c.endpoint == BatchEndpoint::chat_completions) {
        body["id"] = id;
        body["object"] = "chat.completion";
        body["created"] = c.created;
        body["model"] = c.model;
        OrderedJson message = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
        body["choices"] = OrderedJson::array(
            {OrderedJson{{"index", 0}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", c.finish_reason}}});
    } else {
        body["id"] = id;
        body["object"] = "text_completion";
        body["created"] = c.created;
        body["model"] = c.model;
        body["choices"] = OrderedJson::array(
            {OrderedJson{{"text", c.text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", c.finish_reason}}});
    }
    body["usage"] = usage;
    body["system_fingerprint"] = nullptr;
    return body;
}

OrderedJson openai_error_body(std::string_view message, std::string_view type, std::string_view param,
                              std::string_view code) {
    return {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? OrderedJson(nullptr) : OrderedJson(param)},
              {"code", code}}}};
}

std::string batch_error_line(const std::string& record_id, const BatchLineError& e) {
    const std::string suffix = record_id.substr(record_id.find_last_of('_') + 1);
    OrderedJson record = {
        {"id", record_id},
        {"custom_id", e.custom_id.empty() ? OrderedJson(nullptr) : OrderedJson(e.custom_id)},
        {"response",
         {{"status_code", 400},
          {"request_id", "req_" + suffix},
          {"body", openai_error_body(e.message, "invalid_request_error", e.param, e.code)}}},
        {"error", nullptr}};
    return record.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

std::optional<BatchRecordKey> parse_batch_record_key(std::string_view line) {
    const Json j = Json::parse(line.begin(), line.end(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) return std::nullopt;
    const Json* id = field(j, "id");
    if (!id || !id->is_string()) return std::nullopt;
    BatchRecordKey key{id->get<std::string>(), ""};
    if (const Json* c = field(j, "custom_id"); c && c->is_string()) key.custom_id = c->get<std::string>();
    return key;
}

}  // namespace sluice
