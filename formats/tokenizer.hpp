// The DeepSeek-V3 tokenizer: byte-level BPE as Hugging Face `tokenizers` runs it (spec §5).
// Added/special tokens are matched first (leftmost-longest), the rest is split by the
// pre-tokenizer's regexes in sequence (PCRE2, UTF + Unicode properties), mapped byte-to-unicode
// and merged by rank. Built from tokenizer.json, or from parts (a GGUF's vocabulary).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sluice {

enum class TokenType : uint8_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

struct TokenizerParts {
    std::vector<std::string> tokens;          // by id; byte-level strings for normal tokens
    std::vector<TokenType> types;             // by id (control / user_defined = added tokens)
    std::vector<std::pair<std::string, std::string>> merges;  // rank order
    std::vector<std::string> split_regexes;   // the pre-tokenizer's Split patterns, in order
    int32_t bos_id = 0;
    int32_t eos_id = 1;
    bool add_bos = true;
};

class Tokenizer {
public:
    static Tokenizer from_hf_json(const std::string& path);
    // pre_tokenizer: the llama.cpp name ("deepseek-v3"); others are refused as unsupported.
    static Tokenizer from_parts(TokenizerParts parts, std::string_view pre_tokenizer, std::string source);

    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // Token ids of `text` (valid UTF-8, else Error(invalid_input) naming the byte offset).
    // add_special prepends BOS when the tokenizer adds it (HF add_special_tokens).
    std::vector<int32_t> encode(std::string_view text, bool add_special) const;
    // Text of the ids; skip_special drops control tokens. Invalid UTF-8 becomes U+FFFD.
    std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
    // The raw bytes a token stands for (for streaming: may be part of a UTF-8 sequence).
    std::string token_bytes(int32_t id) const;
    const std::string& token_text(int32_t id) const;
    size_t n_vocab() const;
    int32_t bos_id() const;
    int32_t eos_id() const;
    bool is_special(int32_t id) const;
    // -1 when there is no such token.
    int32_t id_of(std::string_view token) const;

    struct Impl;

private:
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Turns generated ids into text as they come: holds back an incomplete trailing UTF-8
// sequence so a character split across tokens prints whole.
class StreamingDecoder {
public:
    explicit StreamingDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
    // Printable text completed by this token (possibly empty).
    std::string push(int32_t id);
    // What is left (an incomplete sequence becomes U+FFFD).
    std::string flush();

private:
    const Tokenizer& tokenizer_;
    std::string pending_;
};

// Replaces invalid UTF-8 in `bytes` by U+FFFD (as Rust's from_utf8_lossy / HF decode do).
std::string utf8_lossy(std::string_view bytes);
// Length of the longest prefix of `bytes` that ends on a character boundary, treating only
// a possibly-incomplete final sequence as unfinished.
size_t utf8_complete_prefix(std::string_view bytes);

}  // namespace sluice
