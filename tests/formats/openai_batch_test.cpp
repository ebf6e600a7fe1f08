// OpenAI batch files: requests parse into what they ask for, every kind of bad line becomes an
// error naming its line and the reason, and output records carry exactly OpenAI's fields.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "formats/openai_batch.hpp"

using namespace sluice;
using Json = nlohmann::json;

TEST_CASE("a chat request and a text completion request parse into what they ask for") {
    const auto chat = parse_batch_line(
        R"({"custom_id":"a-1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[)"
        R"({"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"},)"
        R"({"type":"text","text":" there"}]}],"max_completion_tokens":7,"max_tokens":99,"temperature":0.5,)"
        R"("top_p":0.9,"seed":42,"stop":["\n\n","END"]}})",
        3);
    REQUIRE(chat.request);
    const BatchRequest& r = *chat.request;
    CHECK(r.line == 3);
    CHECK(r.custom_id == "a-1");
    CHECK(r.endpoint == BatchEndpoint::chat_completions);
    REQUIRE(r.messages.size() == 2);
    CHECK(r.messages[1].role == "user");
    CHECK(r.messages[1].content == "Hi there");
    CHECK(*r.max_tokens == 7);  // max_completion_tokens wins over the older max_tokens
    CHECK(r.temperature == 0.5);
    CHECK(r.top_p == doctest::Approx(0.9));
    CHECK(*r.seed == 42);
    CHECK(r.stop == std::vector<std::string>{"\n\n", "END"});

    const auto text = parse_batch_line(
        R"({"custom_id":"b","method":"POST","url":"/v1/completions","body":{"prompt":[1,2,3],"max_tokens":4,"ignore_eos":true}})",
        1);
    REQUIRE(text.request);
    CHECK(text.request->endpoint == BatchEndpoint::completions);
    CHECK(text.request->prompt_is_ids);
    CHECK(text.request->prompt_ids == std::vector<int32_t>{1, 2, 3});
    CHECK(text.request->temperature == 1.0);  // OpenAI's default
    CHECK(text.request->ignore_eos);
    // What changes nothing is accepted: an empty logit_bias, no tools, plain-text output.
    CHECK(parse_batch_line(
              R"({"custom_id":"d","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}],"logit_bias":{},"tools":[],"response_format":{"type":"text"}}})",
              2)
              .request);
    CHECK_FALSE(parse_batch_line("   ", 9).request);
    CHECK_FALSE(parse_batch_line("   ", 9).error);
}

TEST_CASE("a line that cannot be served is an error naming its line and the reason") {
    struct Case {
        const char* line;
        const char* code;
        const char* param;
        const char* custom_id;
    };
    const Case cases[] = {
        {R"({"custom_id":"x","method":"POST","url":"/v1/comp)", "invalid_json", "", ""},
        {R"([1,2])", "invalid_request", "", ""},
        {R"({"method":"POST","url":"/v1/completions","body":{"prompt":"p"}})", "missing_required_parameter", "custom_id", ""},
        {R"({"custom_id":7,"method":"POST","url":"/v1/completions","body":{"prompt":"p"}})", "invalid_type", "custom_id", ""},
        {R"({"custom_id":"c","method":"GET","url":"/v1/completions","body":{"prompt":"p"}})", "invalid_value", "method", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/embeddings","body":{"input":"p"}})", "invalid_url", "url", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions"})", "missing_required_parameter", "body", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{}})", "missing_required_parameter", "prompt", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}})", "invalid_type", "messages", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"tool","content":"x"}]}})",
         "unsupported_value", "messages[0].role", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{"prompt":"p","max_tokens":0}})", "invalid_value",
         "max_tokens", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{"prompt":"p","temperature":3}})", "invalid_value",
         "temperature", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{"prompt":"p","top_p":0}})", "invalid_value",
         "top_p", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{"prompt":"p","n":2}})", "unsupported_value", "n",
         "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{"prompt":"p","stop":["a","b","c","d","e"]}})",
         "invalid_type", "stop", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{"prompt":["a","b"]}})", "unsupported_value",
         "prompt", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/completions","body":{"prompt":"p","logit_bias":{"50256":-100}}})",
         "unsupported_value", "logit_bias", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}})",
         "unsupported_value", "tools", "c"},
        {R"({"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}})",
         "unsupported_value", "response_format", "c"},
    };
    for (const auto& c : cases) {
        INFO(c.line);
        const auto parsed = parse_batch_line(c.line, 12);
        CHECK_FALSE(parsed.request);
        REQUIRE(parsed.error);
        CHECK(parsed.error->code == c.code);
        CHECK(parsed.error->param == c.param);
        CHECK(parsed.error->custom_id == c.custom_id);
        CHECK(parsed.error->message.rfind("line 12: ", 0) == 0);
    }
}

TEST_CASE("output records carry OpenAI's fields in OpenAI's order, with ids derived from the input") {
    BatchCompletion c;
    c.record_id = batch_request_record_id("req-1");
    c.custom_id = "req-1";
    c.model = "model.gguf";
    c.text = "Hello";
    c.finish_reason = "length";
    c.prompt_tokens = 5;
    c.completion_tokens = 2;
    c.created = 1700000000;
    const std::string line = batch_success_line(c);
    CHECK(line.rfind(R"({"id":"batch_req_)", 0) == 0);
    const Json j = Json::parse(line);
    CHECK(j["custom_id"] == "req-1");
    CHECK(j["error"].is_null());
    CHECK(j["response"]["status_code"] == 200);
    const Json& body = j["response"]["body"];
    CHECK(body["object"] == "chat.completion");
    CHECK(body["created"] == 1700000000);
    CHECK(body["choices"][0]["message"]["role"] == "assistant");
    CHECK(body["choices"][0]["message"]["content"] == "Hello");
    CHECK(body["choices"][0]["finish_reason"] == "length");
    CHECK(body["usage"] == Json{{"prompt_tokens", 5}, {"completion_tokens", 2}, {"total_tokens", 7}});
    c.endpoint = BatchEndpoint::completions;
    const Json t = Json::parse(batch_success_line(c));
    CHECK(t["response"]["body"]["object"] == "text_completion");
    CHECK(t["response"]["body"]["choices"][0]["text"] == "Hello");

    const Json e = Json::parse(batch_error_line(batch_line_record_id(4, "raw"),
                                                batch_line_error(4, "", "invalid_json", "", "not valid JSON")));
    CHECK(e["custom_id"].is_null());
    CHECK(e["response"]["status_code"] == 400);
    CHECK(e["response"]["body"]["error"]["message"] == "line 4: not valid JSON");
    CHECK(e["response"]["body"]["error"]["type"] == "invalid_request_error");
    // Ids are functions of the input: the same custom_id, the same id; another line, another id.
    CHECK(batch_request_record_id("req-1") == c.record_id);
    CHECK(batch_line_record_id(4, "raw") != batch_line_record_id(5, "raw"));
    const auto key = parse_batch_record_key(line);
    REQUIRE(key);
    CHECK(key->id == c.record_id);
    CHECK(key->custom_id == "req-1");
    // FNV-1a 64 of "a" (the published test vector): the shard hash is part of the file contract.
    CHECK(batch_custom_id_hash("a") == 0xaf63dc4c8601ec8cull);
}
