// The tokenizer against Hugging Face `tokenizers` on the real DeepSeek-V3 tokenizer.json, over a
// committed corpus (tests/data/tokenizer/corpus.jsonl, scripts/make_tokenizer_fixtures.py), and
// the chat renders against transformers' apply_chat_template.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "formats/chat_template.hpp"
#include "formats/tokenizer.hpp"

using namespace sluice;

namespace {

std::string env(const char* name) {
    const char* v = std::getenv(name);
    REQUIRE_MESSAGE(v, name << " is not set");
    return v;
}

const Tokenizer& real_tokenizer() {
    static const Tokenizer tok =
        Tokenizer::from_hf_json(env("SLUICE_SHARED") + "/models/deepseek-v3-tokenizer/tokenizer.json");
    return tok;
}

std::vector<nlohmann::json> corpus() {
    std::ifstream in(env("SLUICE_TEST_DATA") + "/tokenizer/corpus.jsonl");
    REQUIRE(in.good());
    std::vector<nlohmann::json> lines;
    std::string line;
    while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
    return lines;
}

}  // namespace

TEST_CASE("every corpus string encodes to exactly the ids of Hugging Face tokenizers") {
    const auto& tok = real_tokenizer();
    const auto lines = corpus();
    REQUIRE(lines.size() >= 300);
    int mismatches = 0;
    for (const auto& l : lines) {
        const std::string text = l["text"];
        const auto want = l["ids"].get<std::vector<int32_t>>();
        const auto want_special = l["ids_with_special"].get<std::vector<int32_t>>();
        const auto got = tok.encode(text, false);
        const auto got_special = tok.encode(text, true);
        if (got != want || got_special != want_special) {
            ++mismatches;
            MESSAGE("mismatch for " << nlohmann::json(text).dump());
        }
    }
    CHECK(mismatches == 0);
}

TEST_CASE("decoding the ids gives back the text") {
    const auto& tok = real_tokenizer();
    for (const auto& l : corpus()) {
        const std::string text = l["text"];
        const auto ids = l["ids"].get<std::vector<int32_t>>();
        CHECK(tok.decode(ids) == text);
        // Special tokens are kept, or dropped with skip_special.
        const auto with_bos = l["ids_with_special"].get<std::vector<int32_t>>();
        CHECK(tok.decode(with_bos, true) == tok.decode(ids, true));
    }
}

TEST_CASE("the streaming decoder holds back a character split across tokens") {
    const auto& tok = real_tokenizer();
    const std::string text = "数字😀👨‍👩‍👧‍👦 and é";
    const auto ids = tok.encode(text, false);
    StreamingDecoder d(tok);
    std::string streamed;
    for (int32_t id : ids) {
        const std::string piece = d.push(id);
        // Every piece handed out is whole UTF-8.
        CHECK(utf8_lossy(piece) == piece);
        streamed += piece;
    }
    streamed += d.flush();
    CHECK(streamed == text);
}

TEST_CASE("special tokens and ids are found by name; BOS and EOS come from tokenizer_config.json") {
    const auto& tok = real_tokenizer();
    CHECK(tok.bos_id() == 0);
    CHECK(tok.eos_id() == 1);
    CHECK(tok.id_of("<｜User｜>") == 128803);
    CHECK(tok.is_special(0));
    CHECK_FALSE(tok.is_special(100));
    CHECK(tok.n_vocab() == 128815);
    CHECK(tok.encode("hi", true).front() == 0);
}

TEST_CASE("text that is not valid UTF-8 is refused with the byte offset") {
    const auto& tok = real_tokenizer();
    CHECK_THROWS_WITH_AS(tok.encode(std::string("ok\xff" "bad"), false), doctest::Contains("byte offset 2"), Error);
    CHECK_THROWS_AS(tok.encode(std::string("\xe4\xbd"), false), Error);       // truncated sequence
    CHECK_THROWS_AS(tok.encode(std::string("\xc0\xaf"), false), Error);       // overlong
    CHECK_THROWS_AS(tok.encode(std::string("\xed\xa0\x80"), false), Error);   // surrogate
    // Decoding invalid bytes (a token cut mid-character) gives U+FFFD instead.
    CHECK(utf8_lossy(std::string("a\xe4\xbd")) == "a\xEF\xBF\xBD");
}

TEST_CASE("a missing or malformed tokenizer.json is a clear error") {
    CHECK_THROWS_WITH_AS(Tokenizer::from_hf_json("/nonexistent/tokenizer.json"), doctest::Contains("/nonexistent"), Error);
    const std::string bad = "/tmp/sluice_bad_tokenizer.json";
    std::ofstream(bad) << "{\"model\": {\"type\": \"Unigram\"}}";
    CHECK_THROWS_WITH_AS(Tokenizer::from_hf_json(bad), doctest::Contains("Unigram"), Error);
}

TEST_CASE("V3 chat renders equal transformers' apply_chat_template with the real template") {
    std::ifstream in(env("SLUICE_TEST_DATA") + "/tokenizer/chat_v3.json");
    REQUIRE(in.good());
    const auto renders = nlohmann::json::parse(in);
    const auto kind = chat_template_from_config_file(env("SLUICE_SHARED") +
                                                     "/models/deepseek-v3-tokenizer/tokenizer_config.json");
    CHECK(kind == ChatTemplateKind::deepseek_v3);
    REQUIRE(renders.size() >= 8);
    for (const auto& r : renders) {
        std::vector<ChatMessage> messages;
        for (const auto& m : r["messages"]) messages.push_back({m["role"], m["content"]});
        CHECK(render_chat(messages, kind, r["add_generation_prompt"]) == r["text"].get<std::string>());
    }
}

TEST_CASE("R1 and V3-0324 chat formats follow spec 5.5") {
    const std::vector<ChatMessage> m = {{"user", "Q1"}, {"assistant", "<think>hmm</think>A1"}, {"user", "Q2"}};
    CHECK(render_chat(m, ChatTemplateKind::deepseek_r1, true) ==
          "<｜begin▁of▁sentence｜><｜User｜>Q1<｜Assistant｜>A1<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜><think>\n");
    CHECK(render_chat(m, ChatTemplateKind::deepseek_v3_0324, true) ==
          "<｜begin▁of▁sentence｜><｜User｜>Q1<｜Assistant｜>A1<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜>");
    CHECK_THROWS_AS(render_chat({{"robot", "x"}}, ChatTemplateKind::deepseek_v3, true), Error);
}
