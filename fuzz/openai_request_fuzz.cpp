// libFuzzer entry: what sluice serve does with the bytes a client sends before any model runs.
// The input goes through Beast's HTTP/1.1 request parser with the server's limits and, when a
// whole request comes out, its body through parse_openai_request; the whole input is also
// parsed as a body for each endpoint. Each parse must give exactly one of a request or an error
// (never throw, never crash); an accepted request's fields are within what the server checks;
// and a valid UTF-8 string escaped for a stream event reads back as itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <utility>  // before Boost.Asio under g++ 12 / C++20

#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "formats/openai_batch.hpp"
#include "formats/openai_stream.hpp"

namespace {

void check_body(std::string_view body) {
    for (auto endpoint : {sluice::BatchEndpoint::chat_completions, sluice::BatchEndpoint::completions}) {
        const sluice::ParsedBatchLine r = sluice::parse_openai_request(body, endpoint);
        if (r.request.has_value() == r.error.has_value()) std::abort();
        if (r.error && (r.error->code.empty() || r.error->message.empty())) std::abort();
        if (!r.request) continue;
        const sluice::BatchRequest& q = *r.request;
        if (q.max_tokens && *q.max_tokens < 1) std::abort();
        if (q.temperature < 0 || q.temperature > 2 || q.top_p <= 0 || q.top_p > 1) std::abort();
        if (q.stop.size() > 4) std::abort();
        if (q.stream_include_usage && !q.stream) std::abort();
        if (endpoint == sluice::BatchEndpoint::chat_completions && q.messages.empty()) std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    namespace http = boost::beast::http;
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    check_body(input);

    http::request_parser<http::string_body> parser;
    parser.header_limit(16 << 10);
    parser.body_limit(1 << 20);
    parser.eager(true);
    boost::system::error_code ec;
    size_t at = 0;
    while (!ec && !parser.is_done() && at < size) {
        const size_t used = parser.put(boost::asio::buffer(data + at, size - at), ec);
        if (ec == http::error::need_more) break;
        if (used == 0) break;
        at += used;
    }
    if (!ec && !parser.is_done() && parser.is_header_done()) parser.put_eof(ec);
    if (!ec && parser.is_done()) check_body(parser.get().body());

    // Escaping for stream events: valid UTF-8 reads back unchanged.
    const std::string text(input);
    const nlohmann::json as_json = text;
    std::string reference;
    try {
        reference = as_json.dump();
    } catch (const nlohmann::json::type_error&) {
        return 0;  // not UTF-8: the server never escapes such text (utf8_lossy comes first)
    }
    std::string escaped;
    sluice::append_json_string(text, escaped);
    if (escaped != reference || nlohmann::json::parse(escaped).get<std::string>() != text) std::abort();
    return 0;
}
