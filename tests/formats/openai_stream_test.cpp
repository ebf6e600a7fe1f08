// sluice serve's side of the OpenAI formats: an HTTP request body parses like a batch line's body
// and may stream; every event of a stream is JSON that a standard parser reads back to the same
// text and fields OpenAI sends; error bodies have OpenAI's shape.
#include <doctest/doctest.h>

#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/openai_batch.hpp"
#include "formats/openai_stream.hpp"

using namespace sluice;
using Json = nlohmann::json;

namespace {

// The JSON objects of `data: ...` events, and whether the stream ended with [DONE].
std::vector<Json> events(const std::string& sse, bool* done) {
    std::vector<Json> out;
    *done = false;
    size_t at = 0;
    while (at < sse.size()) {
        const size_t end = sse.find("\n\n", at);
        REQUIRE(end != std::string::npos);
        const std::string line = sse.substr(at, end - at);
        REQUIRE(line.rfind("data: ", 0) == 0);
        CHECK_FALSE(*done);  // nothing after [DONE]
        if (line == "data: [DONE]") *done = true;
        else out.push_back(Json::parse(line.substr(6)));
        at = end + 2;
    }
    return out;
}

}  // namespace

TEST_CASE("an HTTP request body parses like a batch body and may stream, with usage on request") {
    const auto r = parse_openai_request(
        R"({"model":"x","messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"temperature":0,"stream":true,)"
        R"("stream_options":{"include_usage":true},"stop":"END","seed":3})",
        BatchEndpoint::chat_completions);
    REQUIRE(r.request);
    CHECK(r.request->stream);
    CHECK(r.request->stream_include_usage);
    CHECK(*r.request->max_tokens == 5);
    CHECK(r.request->temperature == 0);
    CHECK(r.request->stop == std::vector<std::string>{"END"});
    CHECK(*r.request->seed == 3);

    const auto plain = parse_openai_request(R"({"prompt":"Once","stream":false})", BatchEndpoint::completions);
    REQUIRE(plain.request);
    CHECK_FALSE(plain.request->stream);
    CHECK(plain.request->prompt == "Once");

    // A batch line still cannot stream.
    const auto line = parse_batch_line(
        R"({"custom_id":"a","method":"POST","url":"/v1/completions","body":{"prompt":"x","stream":true}})", 2);
    REQUIRE(line.error);
    CHECK(line.error->param == "stream");
}

TEST_CASE("a bad HTTP request body names its code and field, with no line prefix") {
    struct Case {
        const char* body;
        BatchEndpoint endpoint;
        const char* code;
        const char* param;
    };
    const Case cases[] = {
        {"{\"messages\": [", BatchEndpoint::chat_completions, "invalid_json", ""},
        {"[1,2]", BatchEndpoint::chat_completions, "invalid_type", ""},
        {"{}", BatchEndpoint::chat_completions, "missing_required_parameter", "messages"},
        {"{}", BatchEndpoint::completions, "missing_required_parameter", "prompt"},
        {R"({"prompt":"x","max_tokens":0})", BatchEndpoint::completions, "invalid_value", "max_tokens"},
        {R"({"prompt":"x","temperature":"hot"})", BatchEndpoint::completions, "invalid_type", "temperature"},
        {R"({"prompt":"x","stream":"yes"})", BatchEndpoint::completions, "invalid_type", "stream"},
        {R"({"prompt":"x","stream_options":{"include_usage":true}})", BatchEndpoint::completions, "invalid_value",
         "stream_options"},
        {R"({"prompt":"x","stream":true,"stream_options":[]})", BatchEndpoint::completions, "invalid_type",
         "stream_options"},
        {R"({"messages":[{"role":"tool","content":"x"}]})", BatchEndpoint::chat_completions, "unsupported_value",
         "messages[0].role"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.body);
        const auto r = parse_openai_request(c.body, c.endpoint);
        REQUIRE(r.error);
        CHECK_FALSE(r.request);
        CHECK(r.error->code == c.code);
        CHECK(r.error->param == c.param);
        CHECK(r.error->message.rfind("line", 0) != 0);
    }
}

TEST_CASE("JSON strings escape every byte a parser needs escaped and keep the rest") {
    std::mt19937 rng(5);
    std::vector<std::string> texts = {"", "plain", "quote \" and \\ backslash", "tab\tnew\nline\rcr",
                                      std::string("nul \0 and \x1f", 11), "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80"};
    for (int i = 0; i < 200; ++i) {
        std::string t;
        for (int n = int(rng() % 40); n > 0; --n) t += char(rng() % 128);  // ASCII, control characters included
        texts.push_back(t);
    }
    for (const auto& t : texts) {
        std::string json;
        append_json_string(t, json);
        CHECK(Json::parse(json).get<std::string>() == t);
        CHECK(json == Json(t).dump());  // the same escapes nlohmann writes
    }
}

TEST_CASE("a streamed chat completion's events are OpenAI chunks: role, text, finish, usage, [DONE]") {
    const OpenAIChunkWriter w(BatchEndpoint::chat_completions, "chatcmpl-1", "tiny \"model\"", 1700000000, true);
    std::string sse;
    w.role(sse);
    w.text("Hel", sse);
    w.text("lo \"you\"\n", sse);
    w.finish("length", sse);
    w.usage(7, 2, sse);
    OpenAIChunkWriter::done(sse);
    bool done = false;
    const auto ev = events(sse, &done);
    CHECK(done);
    REQUIRE(ev.size() == 5);
    std::string text;
    for (size_t i = 0; i < 4; ++i) {
        CHECK(ev[i]["id"] == "chatcmpl-1");
        CHECK(ev[i]["object"] == "chat.completion.chunk");
        CHECK(ev[i]["created"] == 1700000000);
        CHECK(ev[i]["model"] == "tiny \"model\"");
        CHECK(ev[i]["usage"].is_null());  // present and null until the last event, as OpenAI sends
        REQUIRE(ev[i]["choices"].size() == 1);
        CHECK(ev[i]["choices"][0]["index"] == 0);
        if (ev[i]["choices"][0]["delta"].contains("content")) text += ev[i]["choices"][0]["delta"]["content"];
    }
    CHECK(ev[0]["choices"][0]["delta"]["role"] == "assistant");
    CHECK(text == "Hello \"you\"\n");
    CHECK(ev[1]["choices"][0]["finish_reason"].is_null());
    CHECK(ev[3]["choices"][0]["finish_reason"] == "length");
    CHECK(ev[3]["choices"][0]["delta"].empty());
    CHECK(ev[4]["choices"].empty());
    CHECK(ev[4]["usage"] == Json({{"prompt_tokens", 7}, {"completion_tokens", 2}, {"total_tokens", 9}}));
}

TEST_CASE("a streamed text completion's events carry text choices; no usage unless asked") {
    const OpenAIChunkWriter w(BatchEndpoint::completions, "cmpl-2", "m", 5, false);
    std::string sse;
    w.text("a\\b", sse);
    w.finish("stop", sse);
    OpenAIChunkWriter::done(sse);
    bool done = false;
    const auto ev = events(sse, &done);
    CHECK(done);
    REQUIRE(ev.size() == 2);
    CHECK(ev[0]["object"] == "text_completion");
    CHECK_FALSE(ev[0].contains("usage"));
    CHECK(ev[0]["choices"][0]["text"] == "a\\b");
    CHECK(ev[1]["choices"][0]["text"] == "");
    CHECK(ev[1]["choices"][0]["finish_reason"] == "stop");
}

TEST_CASE("an error in a stream and an error body have OpenAI's error shape") {
    std::string sse;
    OpenAIChunkWriter::error("gone", "server_error", "cancelled", sse);
    bool done = false;
    const auto ev = events(sse, &done);
    REQUIRE(ev.size() == 1);
    CHECK(ev[0]["error"]["message"] == "gone");
    CHECK(ev[0]["error"]["type"] == "server_error");
    CHECK(ev[0]["error"]["code"] == "cancelled");
    CHECK(ev[0]["error"]["param"].is_null());
    const auto body = openai_error_body("bad", "invalid_request_error", "messages", "invalid_type");
    CHECK(body.dump() ==
          R"({"error":{"message":"bad","type":"invalid_request_error","param":"messages","code":"invalid_type"}})");
}
