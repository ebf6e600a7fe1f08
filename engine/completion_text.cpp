#include "engine/completion_text.hpp"

#include <algorithm>

#include "formats/tokenizer.hpp"

namespace sluice {

CompletionText::CompletionText(const Tokenizer& tokenizer, std::vector<std::string> stops)
    : tokenizer_(tokenizer), stops_(std::move(stops)) {}

bool CompletionText::push(int32_t token) {
    if (stopped() || tokenizer_.is_special(token)) return stopped();
    const size_t before = bytes_.size();
    bytes_ += tokenizer_.token_bytes(token);
    for (const auto& s : stops_) {
        // Only a match ending in the new bytes is new.
        const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
        const size_t at = bytes_.find(s, from);
        if (at != std::string::npos) stop_at_ = std::min(stop_at_, at);
    }
    return stopped();
}

void CompletionText::take_ready(std::string& out) {
    size_t end = std::min(bytes_.size(), stop_at_);
    if (!stopped()) {
        // Hold back the longest tail that a stop string starts with: the next token may complete it.
        size_t hold = 0;
        for (const auto& s : stops_)
            for (size_t n = std::min(s.size() - 1, end - taken_); n > hold; --n)
                if (std::string_view(bytes_).substr(end - n) == std::string_view(s).substr(0, n)) {
                    hold = n;
                    break;
                }
        end -= hold;
    }
    end = taken_ + utf8_complete_prefix(std::string_view(bytes_).substr(taken_, end - taken_));
    take_until(end, out);
}

void CompletionText::take_rest(std::string& out) { take_until(std::min(bytes_.size(), stop_at_), out); }

void CompletionText::take_until(size_t end, std::string& out) {
    if (end <= taken_) return;
    out += utf8_lossy(std::string_view(bytes_).substr(taken_, end - taken_));
    taken_ = end;
}

}  // namespace sluice
