#include "formats/tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <mutex>
#include <queue>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace sluice {

namespace {

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xC0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += char(0xE0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    } else {
        out += char(0xF0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3F));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    }
}

// Length of a valid UTF-8 sequence at s[i], or 0 if invalid / truncated.
size_t utf8_sequence_length(std::string_view s, size_t i) {
    const auto b = [&](size_t k) { return uint8_t(s[k]); };
    const uint8_t c = b(i);
    if (c < 0x80) return 1;
    size_t n;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; }
    else return 0;
    if (i + n > s.size()) return 0;
    for (size_t k = 1; k < n; ++k) {
        if ((b(i + k) & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (b(i + k) & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid.
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

// GPT-2's byte <-> unicode table (spec §5.2 step 3).
struct ByteLevel {
    std::array<std::string, 256> byte_to_symbol;
    std::unordered_map<uint32_t, uint8_t> codepoint_to_byte;
    ByteLevel() {
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            const uint32_t cp = self ? b : next++;
            append_utf8(byte_to_symbol[b], cp);
            codepoint_to_byte[cp] = uint8_t(b);
        }
    }
};
const ByteLevel& byte_level() {
    static const ByteLevel table;
    return table;
}

// The DeepSeek-V3 pre-tokenizer (tokenizer.json; llama.cpp pre-type "deepseek-v3").
const std::vector<std::string> kDeepseekV3Regexes = {
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
    "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

struct Regex {
    pcre2_code* code = nullptr;
    explicit Regex(const std::string& pattern, const std::string& source) {
        int error = 0;
        PCRE2_SIZE offset = 0;
        code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                             &error, &offset, nullptr);
        if (!code) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(error, message, sizeof message);
            fail(ErrorKind::unsupported, "{}: pre-tokenizer regex '{}' does not compile at {}: {}", source, pattern,
                 offset, reinterpret_cast<const char*>(message));
        }
        pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up
    }
    Regex(Regex&& o) noexcept : code(std::exchange(o.code, nullptr)) {}
    ~Regex() { pcre2_code_free(code); }
};

}  // namespace

struct Tokenizer::Impl {
    std::string source;
    std::vector<std::string> tokens;
    std::vector<std::string> bytes;      // what each id decodes to
    std::vector<TokenType> types;
    std::unordered_map<std::string, int32_t> vocab;   // normal tokens
    std::unordered_map<std::string, int32_t> ranks;   // "a b" -> merge rank
    std::vector<Regex> regexes;
    // Added tokens by first byte, longest first (leftmost-longest matching).
    std::array<std::vector<int32_t>, 256> added_by_first_byte;
    int32_t bos = 0, eos = 1;
    bool add_bos = true;
    mutable std::mutex cache_mutex;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

    void build(TokenizerParts&& parts, std::vector<std::string> regex_patterns) {
        tokens = std::move(parts.tokens);
        types = std::move(parts.types);
        types.resize(tokens.size(), TokenType::normal);
        bos = parts.bos_id;
        eos = parts.eos_id;
        add_bos = parts.add_bos;
        for (const auto& p : regex_patterns) regexes.emplace_back(p, source);
        const auto& bl = byte_level();
        bytes.resize(tokens.size());
        for (size_t id = 0; id < tokens.size(); ++id) {
            const std::string& t = tokens[id];
            if (t.empty()) continue;
            if (types[id] == TokenType::control || types[id] == TokenType::user_defined) {
                bytes[id] = t;
                added_by_first_byte[uint8_t(t[0])].push_back(int32_t(id));
                continue;
            }
            vocab.emplace(t, int32_t(id));
            // Map each code point back to its byte; a token outside the byte-level alphabet
            // (e.g. "[PAD123]" fillers in GGUF vocabularies) decodes to its text.
            std::string out;
            bool ok = true;
            for (size_t i = 0; i < t.size();) {
                const size_t n = utf8_sequence_length(t, i);
                if (n == 0) { ok = false; break; }
                uint32_t cp = uint8_t(t[i]) & (n == 1 ? 0x7F : n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
                for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (uint8_t(t[i + k]) & 0x3F);
                const auto it = bl.codepoint_to_byte.find(cp);
                if (it == bl.codepoint_to_byte.end()) { ok = false; break; }
                out += char(it->second);
                i += n;
            }
            bytes[id] = ok ? out : t;
        }
        for (auto& list : added_by_first_byte)
            std::stable_sort(list.begin(), list.end(),
                             [&](int32_t a, int32_t b) { return tokens[size_t(a)].size() > tokens[size_t(b)].size(); });
        ranks.reserve(parts.merges.size());
        for (size_t r = 0; r < parts.merges.size(); ++r)
            ranks.emplace(parts.merges[r].first + " " + parts.merges[r].second, int32_t(r));
    }

    // BPE over one pre-tokenized piece (already byte-level mapped), lowest rank first,
    // leftmost among equal ranks.
    void bpe(const std::string& mapped, std::vector<int32_t>& out) const {
        {
            std::lock_guard lock(cache_mutex);
            const auto it = cache.find(mapped);
            if (it != cache.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        struct Symbol { size_t start, len; int prev, next; bool alive; };
        std::vector<Symbol> symbols;
        for (size_t i = 0; i < mapped.size();) {
            size_t n = utf8_sequence_length(mapped, i);
            if (n == 0) n = 1;
            symbols.push_back({i, n, int(symbols.size()) - 1, int(symbols.size()) + 1, true});
            i += n;
        }
        if (!symbols.empty()) symbols.back().next = -1;
        struct Candidate { int32_t rank; int left; size_t left_len, right_len; };
        auto worse = [](const Candidate& a, const Candidate& b) {
            return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
        };
        std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> heap(worse);
        std::string key;
        auto consider = [&](int left) {
            if (left < 0) return;
            const int right = symbols[size_t(left)].next;
            if (right < 0) return;
            const auto& l = symbols[size_t(left)];
            const auto& r = symbols[size_t(right)];
            key.assign(mapped, l.start, l.len);
            key += ' ';
            key.append(mapped, r.start, r.len);
            const auto it = ranks.find(key);
            if (it != ranks.end()) heap.push({it->second, left, l.len, r.len});
        };
        for (int i = 0; i + 1 < int(symbols.size()); ++i) consider(i);
        while (!heap.empty()) {
            const Candidate c = heap.top();
            heap.pop();
            Symbol& l = symbols[size_t(c.left)];
            if (!l.alive || l.len != c.left_len || l.next < 0) continue;
            Symbol& r = symbols[size_t(l.next)];
            if (r.len != c.right_len) continue;
            l.len += r.len;
            r.alive = false;
            l.next = r.next;
            if (r.next >= 0) symbols[size_t(r.next)].prev = c.left;
            consider(l.prev);
            consider(c.left);
        }
        std::vector<int32_t> ids;
        for (const auto& s : symbols) {
            if (!s.alive) continue;
            const auto it = vocab.find(mapped.substr(s.start, s.len));
            if (it != vocab.end()) {
                ids.push_back(it->second);
                continue;
            }
            // Not in the vocabulary (cannot happen with a complete byte-level vocabulary):
            // fall back to its single characters.
            for (size_t i = s.start; i < s.start + s.len;) {
                size_t n = utf8_sequence_length(mapped, i);
                if (n == 0) n = 1;
                const auto ch = vocab.find(mapped.substr(i, n));
                if (ch == vocab.end())
                    fail(ErrorKind::invalid_input, "{}: no token for byte-level symbol '{}'", source, mapped.substr(i, n));
                ids.push_back(ch->second);
                i += n;
            }
        }
        out.insert(out.end(), ids.begin(), ids.end());
        std::lock_guard lock(cache_mutex);
        if (cache.size() > 200000) cache.clear();  // bounded
        cache.emplace(mapped, std::move(ids));
    }

    // Splits `pieces` by one regex, Isolated: matches and the gaps between them both stay.
    void split(const Regex& re, std::vector<std::string_view>& pieces, pcre2_match_data* md) const {
        std::vector<std::string_view> out;
        out.reserve(pieces.size() * 2);
        for (std::string_view piece : pieces) {
            size_t pos = 0, gap_start = 0;
            while (pos <= piece.size()) {
                const int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(piece.data()), piece.size(), pos, 0,
                                           md, nullptr);
                if (rc < 0) break;
                const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
                const size_t begin = ov[0], end = ov[1];
                if (end == begin) {  // empty match: step over one character
                    size_t n = begin < piece.size() ? utf8_sequence_length(piece, begin) : 1;
                    pos = begin + std::max<size_t>(n, 1);
                    continue;
                }
                if (begin > gap_start) out.push_back(piece.substr(gap_start, begin - gap_start));
                out.push_back(piece.substr(begin, end - begin));
                gap_start = pos = end;
            }
            if (gap_start < piece.size()) out.push_back(piece.substr(gap_start));
        }
        pieces.swap(out);
    }

    void encode_plain(std::string_view text, std::vector<int32_t>& out) const {
        if (text.empty()) return;
        std::vector<std::string_view> pieces{text};
        pcre2_match_data* md = pcre2_match_data_create(4, nullptr);
        for (const auto& re : regexes) split(re, pieces, md);
        pcre2_match_data_free(md);
        const auto& bl = byte_level();
        std::string mapped;
        for (std::string_view piece : pieces) {
            mapped.clear();
            for (char c : piece) mapped += bl.byte_to_symbol[uint8_t(c)];
            bpe(mapped, out);
        }
    }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_hf_json(const std::string& path) {
    std::ifstream in(path);
    if (!in) fail(ErrorKind::io, "{}: cannot open tokenizer", path);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
        fail(ErrorKind::invalid_input, "{}: not valid JSON: {}", path, e.what());
    }
    try {
        const auto& model = j.at("model");
        if (model.value("type", "") != "BPE")
            fail(ErrorKind::unsupported, "{}: model.type '{}' (only BPE is supported)", path, model.value("type", ""));
        TokenizerParts parts;
        int64_t max_id = -1;
        for (const auto& [token, id] : model.at("vocab").items()) max_id = std::max<int64_t>(max_id, id.get<int64_t>());
        for (const auto& t : j.at("added_tokens")) max_id = std::max<int64_t>(max_id, t.at("id").get<int64_t>());
        parts.tokens.resize(size_t(max_id + 1));
        parts.types.assign(size_t(max_id + 1), TokenType::normal);
        for (const auto& [token, id] : model.at("vocab").items()) parts.tokens[size_t(id.get<int64_t>())] = token;
        for (const auto& t : j.at("added_tokens")) {
            const auto id = size_t(t.at("id").get<int64_t>());
            parts.tokens[id] = t.at("content").get<std::string>();
            parts.types[id] = t.value("special", false) ? TokenType::control : TokenType::user_defined;
        }
        for (const auto& m : model.at("merges")) {
            if (m.is_string()) {
                const std::string s = m.get<std::string>();
                const auto space = s.find(' ');
                if (space == std::string::npos) fail(ErrorKind::invalid_input, "{}: merge '{}' has no space", path, s);
                parts.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
            } else {
                parts.merges.emplace_back(m.at(0).get<std::string>(), m.at(1).get<std::string>());
            }
        }
        std::vector<std::string> regexes;
        const auto& pre = j.at("pre_tokenizer");
        auto add_split = [&](const nlohmann::json& p) {
            const std::string type = p.value("type", "");
            if (type == "Split") {
                if (p.value("behavior", "") != "Isolated" || p.value("invert", false))
                    fail(ErrorKind::unsupported, "{}: Split pre-tokenizer behaviour other than Isolated", path);
                regexes.push_back(p.at("pattern").at("Regex").get<std::string>());
            } else if (type == "ByteLevel") {
                if (p.value("use_regex", true) || p.value("add_prefix_space", false))
                    fail(ErrorKind::unsupported, "{}: ByteLevel pre-tokenizer with its own regex or prefix space", path);
            } else {
                fail(ErrorKind::unsupported, "{}: pre-tokenizer '{}' is not supported", path, type);
            }
        };
        if (pre.value("type", "") == "Sequence")
            for (const auto& p : pre.at("pretokenizers")) add_split(p);
        else
            add_split(pre);
        // BOS/EOS from tokenizer_config.json beside it, else the DeepSeek defaults.
        const std::string dir = path.substr(0, path.find_last_of('/') + 1);
        std::ifstream config_in(dir + "tokenizer_config.json");
        std::string bos_text = "<｜begin▁of▁sentence｜>", eos_text = "<｜end▁of▁sentence｜>";
        if (config_in) {
            const auto c = nlohmann::json::parse(config_in);
            auto content = [](const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.at("content").get<std::string>(); };
            if (c.contains("bos_token") && !c["bos_token"].is_null()) bos_text = content(c["bos_token"]);
            if (c.contains("eos_token") && !c["eos_token"].is_null()) eos_text = content(c["eos_token"]);
            parts.add_bos = c.value("add_bos_token", true);
        }
        auto impl = std::make_unique<Impl>();
        impl->source = path;
        impl->build(std::move(parts), std::move(regexes));
        Tokenizer tok(std::move(impl));
        tok.impl_->bos = tok.id_of(bos_text);
        tok.impl_->eos = tok.id_of(eos_text);
        if (tok.impl_->bos < 0 || tok.impl_->eos < 0)
            fail(ErrorKind::invalid_input, "{}: BOS '{}' or EOS '{}' is not a token", path, bos_text, eos_text);
        return tok;
    } catch (const nlohmann::json::exception& e) {
        fail(ErrorKind::invalid_input, "{}: malformed tokenizer: {}", path, e.what());
    }
}

Tokenizer Tokenizer::from_parts(TokenizerParts parts, std::string_view pre_tokenizer, std::string source) {
    std::vector<std::string> regexes = parts.split_regexes;
    if (regexes.empty()) {
        if (pre_tokenizer != "deepseek-v3" && pre_tokenizer != "deepseek-v3-llm")
            fail(ErrorKind::unsupported, "{}: pre-tokenizer '{}' is not supported (only deepseek-v3)", source,
                 pre_tokenizer);
        regexes = kDeepseekV3Regexes;
    }
    auto impl = std::make_unique<Impl>();
    impl->source = std::move(source);
    impl->build(std::move(parts), std::move(regexes));
    return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
    for (size_t i = 0; i < text.size();) {
        const size_t n = utf8_sequence_length(text, i);
        if (n == 0) fail(ErrorKind::invalid_input, "text is not valid UTF-8 at byte offset {}", i);
        i += n;
    }
    std::vector<int32_t> out;
    if (add_special && impl_->add_bos) out.push_back(impl_->bos);
    // Added tokens first, leftmost-longest; the text between them goes through BPE.
    size_t plain_start = 0;
    for (size_t i = 0; i < text.size();) {
        int32_t found = -1;
        for (int32_t id : impl_->added_by_first_byte[uint8_t(text[i])]) {
            const std::string& t = impl_->tokens[size_t(id)];
            if (text.compare(i, t.size(), t) == 0) {
                found = id;
                break;
            }
        }
        if (found < 0) {
            ++i;
            continue;
        }
        impl_->encode_plain(text.substr(plain_start, i - plain_start), out);
        out.push_back(found);
        i += impl_->tokens[size_t(found)].size();
        plain_start = i;
    }
    impl_->encode_plain(text.substr(plain_start), out);
    return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
    std::string bytes;
    for (int32_t id : ids) {
        if (skip_special && is_special(id)) continue;
        bytes += token_bytes(id);
    }
    return utf8_lossy(bytes);
}

std::string Tokenizer::token_bytes(int32_t id) const {
    if (id < 0 || size_t(id) >= impl_->bytes.size())
        fail(ErrorKind::invalid_input, "token id {} is outside the vocabulary [0, {})", id, impl_->bytes.size());
    return impl_->bytes[size_t(id)];
}

const std::string& Tokenizer::token_text(int32_t id) const {
    if (id < 0 || size_t(id) >= impl_->tokens.size())
        fail(ErrorKind::invalid_input, "token id {} is outside the vocabulary [0, {})", id, impl_->tokens.size());
    return impl_->tokens[size_t(id)];
}

size_t Tokenizer::n_vocab() const { return impl_->tokens.size(); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::is_special(int32_t id) const {
    return id >= 0 && size_t(id) < impl_->types.size() && impl_->types[size_t(id)] == TokenType::control;
}

int32_t Tokenizer::id_of(std::string_view token) const {
    for (size_t id = 0; id < impl_->tokens.size(); ++id)
        if (impl_->tokens[id] == token) return int32_t(id);
    return -1;
}

// One U+FFFD per maximal ill-formed subpart (Unicode §3.9), as Rust's from_utf8_lossy and
// hence Hugging Face's decode do.
std::string utf8_lossy(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    for (size_t i = 0; i < bytes.size();) {
        const size_t n = utf8_sequence_length(bytes, i);
        if (n > 0) {
            out.append(bytes, i, n);
            i += n;
            continue;
        }
        const uint8_t c = uint8_t(bytes[i]);
        size_t expect = 1;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) expect = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            expect = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            expect = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        }
        size_t used = 1;
        while (used < expect && i + used < bytes.size()) {
            const uint8_t d = uint8_t(bytes[i + used]);
            const bool ok = used == 1 ? (d >= lo && d <= hi) : (d >= 0x80 && d <= 0xBF);
            if (!ok) break;
            ++used;
        }
        out += "\xEF\xBF\xBD";
        i += used;
    }
    return out;
}

size_t utf8_complete_prefix(std::string_view bytes) {
    // Walk back over at most 3 trailing bytes to find the start of the last sequence.
    const size_t size = bytes.size();
    for (size_t back = 1; back <= 4 && back <= size; ++back) {
        const uint8_t c = uint8_t(bytes[size - back]);
        if ((c & 0xC0) == 0x80) continue;  // continuation byte
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return back < need ? size - back : size;
    }
    return size;
}

std::string StreamingDecoder::push(int32_t id) {
    pending_ += tokenizer_.token_bytes(id);
    const size_t complete = utf8_complete_prefix(pending_);
    std::string out = utf8_lossy(std::string_view(pending_).substr(0, complete));
    pending_.erase(0, complete);
    return out;
}

std::string StreamingDecoder::flush() {
    std::string out = utf8_lossy(pending_);
    pending_.clear();
    return out;
}

}  // namespace sluice
