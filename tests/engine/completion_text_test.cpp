// A request's streamed text (engine/completion_text) on the real DeepSeek-V3 tokenizer: the pieces
// handed out as tokens arrive join to exactly the text of the whole generation (special tokens
// skipped, cut before the first stop string, invalid UTF-8 replaced as a whole decode does), no
// piece ever holds a stop string or a split character, and push() says stop at the token that
// completes one.
#include <doctest/doctest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "engine/completion_text.hpp"
#include "formats/tokenizer.hpp"

using namespace sluice;

namespace {

const Tokenizer& tokenizer() {
    static const Tokenizer t = [] {
        const char* shared = std::getenv("SLUICE_SHARED");
        REQUIRE_MESSAGE(shared, "SLUICE_SHARED is not set");
        return Tokenizer::from_hf_json(std::string(shared) + "/models/deepseek-v3-tokenizer/tokenizer.json");
    }();
    return t;
}

// Streams `ids` through a CompletionText: the pieces taken after each token, the rest at the end,
// and the index of the token whose push() said stop (-1: none).
struct Streamed {
    std::vector<std::string> pieces;
    std::string rest;
    int stopped_at = -1;
    std::string joined() const {
        std::string s;
        for (const auto& p : pieces) s += p;
        return s + rest;
    }
};
Streamed stream(const std::vector<int32_t>& ids, const std::vector<std::string>& stops) {
    CompletionText text(tokenizer(), stops);
    Streamed out;
    for (size_t i = 0; i < ids.size(); ++i) {
        const bool stop = text.push(ids[i]);
        std::string piece;
        text.take_ready(piece);
        out.pieces.push_back(piece);
        if (stop) {
            out.stopped_at = int(i);
            break;
        }
    }
    text.take_rest(out.rest);
    return out;
}

// The whole generation's text as one decode: specials skipped, cut at the first stop string.
std::string whole(const std::vector<int32_t>& ids, const std::vector<std::string>& stops) {
    std::string bytes;
    for (int32_t id : ids)
        if (!tokenizer().is_special(id)) bytes += tokenizer().token_bytes(id);
    size_t cut = bytes.size();
    for (const auto& s : stops) cut = std::min(cut, bytes.find(s) == std::string::npos ? cut : bytes.find(s));
    return utf8_lossy(std::string_view(bytes).substr(0, cut));
}

}  // namespace

TEST_CASE("a stop string split across tokens is held back, cut, and ends generation at its last token") {
    const std::string text = "The answer is 42.\n\nEND OF TEXT and more words after it";
    const std::vector<int32_t> ids = tokenizer().encode(text, false);
    for (const std::string stop : {"\n\nEND", "END OF", "42.", "words after"}) {
        CAPTURE(stop);
        const Streamed s = stream(ids, {stop, "never appears"});
        CHECK(s.joined() == text.substr(0, text.find(stop)));
        for (const auto& p : s.pieces) CHECK(p.find(stop) == std::string::npos);
        // Stopped at the first token whose bytes reach the stop string's end.
        std::string bytes;
        int expected = -1;
        for (size_t i = 0; i < ids.size() && expected < 0; ++i) {
            bytes += tokenizer().token_bytes(ids[i]);
            if (bytes.find(stop) != std::string::npos) expected = int(i);
        }
        CHECK(s.stopped_at == expected);
    }
}

TEST_CASE("streamed pieces of random token runs join to the whole decode and never split a character") {
    std::mt19937 rng(17);
    std::uniform_int_distribution<int32_t> id(0, int32_t(tokenizer().n_vocab()) - 1);
    const std::vector<std::vector<std::string>> stop_sets = {{}, {"e"}, {"\xe4\xb8"}, {"th", "\n"}, {"zzzz"}};
    int n_stopped = 0, n_special = 0;
    for (int run = 0; run < 300; ++run) {
        std::vector<int32_t> ids(size_t(1 + rng() % 40));
        for (auto& t : ids) {
            t = id(rng);
            n_special += tokenizer().is_special(t);
        }
        const auto& stops = stop_sets[size_t(run) % stop_sets.size()];
        const Streamed s = stream(ids, stops);
        CAPTURE(run);
        CHECK(s.joined() == whole(ids, stops));
        for (const auto& p : s.pieces) {
            CHECK(utf8_lossy(p) == p);  // whole characters only
            for (const auto& stop : stops) CHECK(p.find(stop) == std::string::npos);
        }
        n_stopped += s.stopped_at >= 0;
    }
    CHECK(n_stopped > 20);  // the stop sets did stop some runs
    CHECK(n_special > 0);   // and some runs held special tokens
}

TEST_CASE("special tokens add no text") {
    const int32_t bos = tokenizer().bos_id();
    REQUIRE(tokenizer().is_special(bos));
    const std::vector<int32_t> hello = tokenizer().encode("hello", false);
    std::vector<int32_t> ids = {bos};
    ids.insert(ids.end(), hello.begin(), hello.end());
    ids.push_back(bos);
    CHECK(stream(ids, {}).joined() == "hello");
}
