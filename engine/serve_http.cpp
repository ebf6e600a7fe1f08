#include "engine/serve_http.hpp"

// Boost 1.74's Asio under g++ 12 and C++20 uses std::exchange without including <utility>.
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <fmt/format.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <random>
#include <unordered_set>

#include "core/error.hpp"
#include "engine/model_loader.hpp"
#include "engine/openai_prompt.hpp"
#include "formats/openai_batch.hpp"
#include "formats/openai_stream.hpp"
#include "formats/tokenizer.hpp"

namespace sluice {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

std::string_view view(beast::string_view s) { return {s.data(), s.size()}; }

// ASCII case-insensitive equality (header values).
bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
    return true;
}

// Equal strings in time that depends only on the expected key's length, not on where they differ.
bool equal_constant_time(std::string_view given, std::string_view expected) {
    unsigned char diff = given.size() == expected.size() ? 0 : 1;
    for (size_t i = 0; i < expected.size(); ++i)
        diff |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
    return diff == 0;
}

// One chunk of a chunked HTTP/1.1 body (never empty: an empty chunk ends the body).
void append_http_chunk(std::string_view data, std::string& out) {
    fmt::format_to(std::back_inserter(out), "{:x}\r\n", data.size());
    out += data;
    out += "\r\n";
}

std::chrono::steady_clock::duration seconds(double s) {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

class Session;

class Server {
public:
    Server(asio::io_context& io, const ServeOptions& options, ServeEngine& engine, const OpenModel& model)
        : io_(io), options_(options), engine_(engine), model_(model), acceptor_(io), signals_(io, SIGINT, SIGTERM),
          exit_timer_(io), seed_(std::random_device{}()) {
        model_name_ = options.model_name.empty()
                          ? std::filesystem::path(options.engine.model).lexically_normal().filename().string()
                          : options.model_name;
        if (model_name_.empty()) model_name_ = "sluice";
        created_ = int64_t(std::time(nullptr));
        error_code ec;
        const auto address = asio::ip::make_address(options.host, ec);
        if (ec) fail(ErrorKind::invalid_input, "--host '{}': not an IP address ({})", options.host, ec.message());
        const tcp::endpoint endpoint(address, static_cast<unsigned short>(options.port));
        acceptor_.open(endpoint.protocol(), ec);
        if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec) acceptor_.bind(endpoint, ec);
        if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
        if (ec) fail(ErrorKind::io, "cannot listen on {}:{}: {}", options.host, options.port, ec.message());
        port_ = acceptor_.local_endpoint().port();
    }

    void start() {
        accept();
        signals_.async_wait([this](const error_code& ec, int sig) { on_signal(ec, sig); });
    }

    // Posted from the compute thread when it ends.
    void on_engine_exit() {
        if (engine_.failure()) {
            finish();
            return;
        }
        // Let the sessions write what the engine finished, then stop the loop.
        exit_deadline_ = std::chrono::steady_clock::now() + seconds(2);
        wait_for_sessions();
    }

    int port() const { return port_; }
    bool stopping() const { return stopping_; }
    ServeEngine& engine() { return engine_; }
    const ServeOptions& options() const { return options_; }
    const OpenModel& model() const { return model_; }
    const std::string& model_name() const { return model_name_; }
    int64_t created() const { return created_; }
    ServeHttpStats& http_stats() { return http_; }
    uint64_t next_seed() { return seed_(); }
    std::string next_completion_id(bool chat) {
        return fmt::format("{}{:016x}{:08x}", chat ? "chatcmpl-" : "cmpl-", seed_(), ++n_completions_);
    }
    void add(Session* s) {
        sessions_.insert(s);
        ++http_.connections_open;
    }
    void remove(Session* s) {
        sessions_.erase(s);
        --http_.connections_open;
    }

private:
    void accept();
    void on_signal(const error_code& ec, int sig);
    void begin_shutdown();
    void wait_for_sessions();
    // Ends every socket, timer and wait, so the event loop runs out of work and returns.
    void finish();

    asio::io_context& io_;
    const ServeOptions& options_;
    ServeEngine& engine_;
    const OpenModel& model_;
    tcp::acceptor acceptor_;
    asio::signal_set signals_;
    asio::steady_timer exit_timer_;
    std::chrono::steady_clock::time_point exit_deadline_{};
    std::mt19937_64 seed_;
    std::string model_name_;
    int64_t created_ = 0;
    int port_ = 0;
    uint32_t n_completions_ = 0;
    bool stopping_ = false;
    ServeHttpStats http_;
    std::unordered_set<Session*> sessions_;  // alive (each removes itself when destroyed)
};

class Session : public std::enable_shared_from_this<Session> {
public:
    Session(tcp::socket socket, Server& server)
        : socket_(std::move(socket)), server_(server),
          buffer_(server.options().max_header_bytes + server.options().max_body_bytes + (64 << 10)),
          timer_(socket_.get_executor()) {
        server_.add(this);
    }
    ~Session() {
        if (request_ && !finished_) request_->cancel = true;
        server_.remove(this);
    }

    void start() { next_request(); }
    // Beyond --max-connections: one 503 and close.
    void refuse() {
        keep_alive_ = false;
        send_error(http::status::service_unavailable, "too many connections; try again later", "server_error",
                   "service_unavailable");
    }
    bool idle() const { return phase_ == Phase::idle; }
    bool busy() const { return phase_ != Phase::idle && phase_ != Phase::closed; }
    void close();

private:
    enum class Phase { idle, reading, waiting, writing, streaming, closed };

    void next_request();
    void read_request();
    void on_header(const error_code& ec);
    void on_read(const error_code& ec);
    void handle();
    void start_completion(BatchEndpoint endpoint);
    void on_engine();
    void pump_stream();
    void send_completion();
    void watch_disconnect();
    void send(http::status status, std::string body, const char* content_type, int retry_after = 0);
    void send_error(http::status status, std::string_view message, std::string_view type, std::string_view code,
                    std::string_view param = "", int retry_after = 0);
    void write_out(bool final);
    void after_response(const error_code& ec);
    void arm(double s);
    void disarm();
    void on_timeout();
    void count(int status) { ++server_.http_stats().responses[{endpoint_, status}]; }

    tcp::socket socket_;
    Server& server_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    http::request<http::string_body> req_;
    http::response<http::string_body> res_;
    asio::steady_timer timer_;
    unsigned timer_generation_ = 0;
    Phase phase_ = Phase::idle;
    bool timed_out_ = false;
    bool keep_alive_ = true;
    bool watching_ = false;
    bool resume_after_watch_ = false;
    std::string endpoint_ = "other";

    // The completion in flight.
    std::shared_ptr<ServeRequest> request_;
    BatchEndpoint completion_endpoint_ = BatchEndpoint::chat_completions;
    bool stream_ = false;
    std::optional<OpenAIChunkWriter> chunks_;
    std::string completion_id_;
    int64_t created_ = 0;
    int64_t prompt_tokens_ = 0;
    bool finished_ = false;       // the engine is done with it
    ServeRequest::Outbox outcome_;
    bool final_written_ = false;  // the stream's last bytes are queued
    bool writing_ = false;
    std::string text_;            // taken from the engine, not yet sent
    std::string events_;          // server-sent events being built
    std::string out_;             // bytes being written
};

void Session::arm(double s) {
    const unsigned generation = ++timer_generation_;
    timer_.expires_after(seconds(s));
    timer_.async_wait([self = shared_from_this(), generation](const error_code& ec) {
        if (!ec && generation == self->timer_generation_) self->on_timeout();
    });
}

void Session::disarm() {
    ++timer_generation_;
    timer_.cancel();
}

void Session::on_timeout() {
    switch (phase_) {
        case Phase::reading:
            // A client too slow with its request: stop the read and answer 408.
            timed_out_ = true;
            socket_.cancel();
            break;
        case Phase::waiting: break;
        default: close();  // idle too long, or a client that does not read what it is sent
    }
}

void Session::close() {
    if (phase_ == Phase::closed) return;
    phase_ = Phase::closed;
    disarm();
    if (request_ && !finished_) request_->cancel = true;
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
}

void Session::next_request() {
    request_.reset();
    chunks_.reset();
    finished_ = final_written_ = false;
    text_.clear();
    endpoint_ = "other";
    if (!keep_alive_ || server_.stopping()) {
        close();
        return;
    }
    phase_ = Phase::idle;
    if (watching_) {
        // The read that watched for a disconnect is still out: end it first (it keeps its bytes).
        resume_after_watch_ = true;
        socket_.cancel();
        return;
    }
    if (buffer_.size() > 0) {
        read_request();
        return;
    }
    arm(server_.options().idle_timeout_seconds);
    socket_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](const error_code& ec, size_t n) {
        self->disarm();
        self->buffer_.commit(n);
        if (ec || self->phase_ == Phase::closed) {
            self->close();
            return;
        }
        self->read_request();
    });
}

void Session::read_request() {
    phase_ = Phase::reading;
    timed_out_ = false;
    parser_.emplace();
    parser_->header_limit(uint32_t(server_.options().max_header_bytes));
    parser_->body_limit(server_.options().max_body_bytes);
    arm(server_.options().header_timeout_seconds);
    http::async_read_header(socket_, buffer_, *parser_,
                            [self = shared_from_this()](const error_code& ec, size_t) { self->on_header(ec); });
}

void Session::on_header(const error_code& ec) {
    if (ec) {
        on_read(ec);
        return;
    }
    auto read_body = [self = shared_from_this()] {
        http::async_read(self->socket_, self->buffer_, *self->parser_,
                         [self](const error_code& e, size_t) { self->on_read(e); });
    };
    if (parser_->is_done()) {
        on_read(ec);
        return;
    }
    if (iequals(view(parser_->get()[http::field::expect]), "100-continue")) {
        // curl asks before sending a body over 1 KiB.
        out_ = "HTTP/1.1 100 Continue\r\n\r\n";
        asio::async_write(socket_, asio::buffer(out_), [self = shared_from_this(), read_body](const error_code& e, size_t) {
            if (e) {
                self->on_read(e);
                return;
            }
            read_body();
        });
        return;
    }
    read_body();
}

void Session::on_read(const error_code& ec) {
    disarm();
    if (phase_ == Phase::closed) return;
    if (timed_out_) {
        keep_alive_ = false;
        send_error(http::status::request_timeout, "the request did not arrive within the header timeout",
                   "invalid_request_error", "timeout");
        return;
    }
    if (ec == http::error::body_limit) {
        keep_alive_ = false;
        send_error(http::status::payload_too_large,
                   fmt::format("the request body is larger than {} bytes", server_.options().max_body_bytes),
                   "invalid_request_error", "request_too_large");
        return;
    }
    if (ec == http::error::header_limit) {
        keep_alive_ = false;
        send_error(http::status::request_header_fields_too_large,
                   fmt::format("the request headers are larger than {} bytes", server_.options().max_header_bytes),
                   "invalid_request_error", "headers_too_large");
        return;
    }
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) {
        close();
        return;
    }
    if (ec) {
        // Anything else from the parser: not HTTP we can read.
        keep_alive_ = false;
        send_error(http::status::bad_request, fmt::format("malformed HTTP request: {}", ec.message()),
                   "invalid_request_error", "invalid_http");
        return;
    }
    req_ = parser_->release();
    parser_.reset();
    // Nothing a client sends may end the event loop: what throws becomes an error response.
    try {
        handle();
    } catch (const Error& e) {
        keep_alive_ = false;
        send_error(e.kind() == ErrorKind::invalid_input ? http::status::bad_request : http::status::internal_server_error,
                   e.what(), "invalid_request_error", error_kind_name(e.kind()));
    } catch (const std::exception& e) {
        keep_alive_ = false;
        send_error(http::status::internal_server_error, e.what(), "server_error", "internal_error");
    }
}

void Session::handle() {
    keep_alive_ = req_.keep_alive();
    std::string_view target = view(req_.target());
    target = target.substr(0, target.find('?'));
    static constexpr std::string_view kKnown[] = {"/health", "/metrics", "/v1/models", "/v1/chat/completions",
                                                  "/v1/completions"};
    for (std::string_view k : kKnown)
        if (target == k) endpoint_ = std::string(k);
    const bool get = req_.method() == http::verb::get, post = req_.method() == http::verb::post;
    if (endpoint_ == "other") {
        send_error(http::status::not_found, fmt::format("no such endpoint: {}", target), "invalid_request_error",
                   "not_found");
        return;
    }
    if (endpoint_ != "/health" && !server_.options().api_key.empty()) {
        const std::string_view auth = view(req_[http::field::authorization]);
        const std::string_view scheme = "Bearer ";
        const bool ok = auth.size() > scheme.size() && iequals(auth.substr(0, scheme.size()), scheme) &&
                        equal_constant_time(auth.substr(scheme.size()), server_.options().api_key);
        if (!ok) {
            send_error(http::status::unauthorized, "invalid or missing API key (Authorization: Bearer KEY)",
                       "invalid_request_error", "invalid_api_key");
            return;
        }
    }
    const bool completion = endpoint_ == "/v1/chat/completions" || endpoint_ == "/v1/completions";
    if (completion ? !post : !get) {
        send_error(http::status::method_not_allowed,
                   fmt::format("{} takes {}", endpoint_, completion ? "POST" : "GET"), "invalid_request_error",
                   "method_not_allowed");
        return;
    }
    if (endpoint_ == "/health") {
        if (server_.stopping())
            send(http::status::service_unavailable, R"({"status":"stopping"})", "application/json");
        else if (!server_.engine().ready())
            send(http::status::service_unavailable, R"({"status":"loading"})", "application/json");
        else
            send(http::status::ok, R"({"status":"ok"})", "application/json");
    } else if (endpoint_ == "/metrics") {
        send(http::status::ok, render_metrics(server_.engine().stats(), server_.http_stats()),
             "text/plain; version=0.0.4; charset=utf-8");
    } else if (endpoint_ == "/v1/models") {
        nlohmann::ordered_json model = {{"id", server_.model_name()},
                                        {"object", "model"},
                                        {"created", server_.created()},
                                        {"owned_by", "sluice"}};
        nlohmann::ordered_json list = {{"object", "list"}, {"data", nlohmann::ordered_json::array({model})}};
        send(http::status::ok, list.dump(), "application/json");
    } else {
        start_completion(endpoint_ == "/v1/chat/completions" ? BatchEndpoint::chat_completions
                                                             : BatchEndpoint::completions);
    }
}

void Session::start_completion(BatchEndpoint endpoint) {
    ServeEngine& engine = server_.engine();
    if (server_.stopping()) {
        send_error(http::status::service_unavailable, "the server is shutting down", "server_error",
                   "service_unavailable");
        return;
    }
    if (!engine.ready()) {
        send_error(http::status::service_unavailable, "the model is loading; try again when /health says ok",
                   "server_error", "model_loading", "", 1);
        return;
    }
    ParsedBatchLine parsed = parse_openai_request(req_.body(), endpoint);
    if (parsed.error) {
        send_error(http::status::bad_request, parsed.error->message, "invalid_request_error", parsed.error->code,
                   parsed.error->param);
        return;
    }
    const BatchRequest& r = *parsed.request;
    OpenAIPrompt prompt;
    if (const auto why = prepare_openai_prompt(r, server_.model(), engine.options().context, prompt)) {
        send_error(http::status::bad_request, why->message, "invalid_request_error", why->code, why->param);
        return;
    }
    auto request = std::make_shared<ServeRequest>();
    prompt_tokens_ = int64_t(prompt.ids.size());
    request->prompt = std::move(prompt.ids);
    request->max_tokens = prompt.max_tokens;
    request->sampler = {float(r.temperature), 0, float(r.top_p), r.seed ? uint64_t(*r.seed) : server_.next_seed(),
                        int64_t(server_.model().tokenizer->n_vocab())};
    request->stop_at_eos = !r.ignore_eos;
    request->stop = r.stop;
    request->arrived = ServeClock::now();
    request->wake = [weak = weak_from_this(), executor = socket_.get_executor()] {
        asio::post(executor, [weak] {
            if (auto self = weak.lock()) self->on_engine();
        });
    };
    switch (engine.submit(request)) {
        case ServeEngine::Admission::accepted: break;
        case ServeEngine::Admission::queue_full:
            send_error(http::status::too_many_requests,
                       fmt::format("the server is at capacity ({} running, {} waiting); retry later",
                                   engine.options().max_sequences, engine.options().max_queue),
                       "requests", "rate_limit_exceeded", "", engine.retry_after_seconds());
            return;
        case ServeEngine::Admission::not_ready:
            send_error(http::status::service_unavailable, "the model is loading", "server_error", "model_loading", "", 1);
            return;
        case ServeEngine::Admission::stopping:
            send_error(http::status::service_unavailable, "the server is shutting down", "server_error",
                       "service_unavailable");
            return;
    }
    request_ = std::move(request);
    completion_endpoint_ = endpoint;
    stream_ = r.stream;
    completion_id_ = server_.next_completion_id(endpoint == BatchEndpoint::chat_completions);
    created_ = int64_t(std::time(nullptr));
    phase_ = Phase::waiting;
    if (stream_) {
        chunks_.emplace(endpoint, completion_id_, server_.model_name(), created_, r.stream_include_usage);
        count(200);
        phase_ = Phase::streaming;
        out_ = fmt::format(
            "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "Transfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
            keep_alive_ ? "keep-alive" : "close");
        if (endpoint == BatchEndpoint::chat_completions) {
            events_.clear();
            chunks_->role(events_);
            append_http_chunk(events_, out_);
        }
        write_out(false);
    }
    watch_disconnect();
}

// While a completion runs, a read on the socket notices a client that goes away (EOF or reset):
// its request is cancelled before the next step. Bytes a client sends meanwhile (its next
// request) stay in the buffer. This read is also what keeps a waiting session alive (the
// engine's wake-up holds it weakly, so a session gone for any reason never pins its request).
void Session::watch_disconnect() {
    if (watching_ || phase_ == Phase::closed) return;
    watching_ = true;
    socket_.async_read_some(buffer_.prepare(1024), [self = shared_from_this()](const error_code& ec, size_t n) {
        self->watching_ = false;
        self->buffer_.commit(n);
        if (self->resume_after_watch_) {
            self->resume_after_watch_ = false;
            if (self->phase_ != Phase::closed) self->next_request();
            return;
        }
        if (ec) {
            self->close();  // cancels the request when it is still running
            return;
        }
        if (!self->request_ || self->finished_) return;
        if (self->buffer_.size() >= (64 << 10)) {
            self->close();  // 64 KiB sent ahead while its request runs: not a client we serve
            return;
        }
        self->watch_disconnect();
    });
}

void Session::on_engine() {
    if (!request_ || phase_ == Phase::closed) return;
    const ServeRequest::Outbox state = request_->take(text_);
    if (state.done && !finished_) {
        finished_ = true;
        outcome_ = state;
    }
    if (stream_) {
        pump_stream();
    } else if (finished_) {
        send_completion();
    }
}

void Session::pump_stream() {
    if (writing_ || final_written_ || phase_ == Phase::closed) return;
    events_.clear();
    if (!text_.empty()) {
        chunks_->text(text_, events_);
        text_.clear();
    }
    if (finished_) {
        if (outcome_.reason == FinishReason::cancelled && !outcome_.error.empty()) {
            OpenAIChunkWriter::error(outcome_.error, "server_error", "engine_error", events_);
        } else if (outcome_.reason == FinishReason::cancelled) {
            OpenAIChunkWriter::error(server_.stopping() ? "the server shut down before the completion finished"
                                                        : "the completion was cancelled",
                                     "server_error", "cancelled", events_);
        } else {
            chunks_->finish(finish_reason_name(outcome_.reason), events_);
            if (chunks_->include_usage()) chunks_->usage(prompt_tokens_, outcome_.completion_tokens, events_);
        }
        OpenAIChunkWriter::done(events_);
        final_written_ = true;
    }
    if (events_.empty()) return;
    out_.clear();
    append_http_chunk(events_, out_);
    if (final_written_) out_ += "0\r\n\r\n";  // the last chunk
    write_out(final_written_);
}

void Session::write_out(bool final) {
    writing_ = true;
    arm(server_.options().write_timeout_seconds);
    asio::async_write(socket_, asio::buffer(out_), [self = shared_from_this(), final](const error_code& ec, size_t) {
        self->writing_ = false;
        self->disarm();
        if (ec || self->phase_ == Phase::closed) {
            self->close();
            return;
        }
        if (final) {
            self->next_request();
            return;
        }
        self->pump_stream();
    });
}

void Session::send_completion() {
    if (outcome_.reason == FinishReason::cancelled && !outcome_.error.empty()) {
        // A step failed under it (a read of the model): the server goes on serving the others.
        send_error(http::status::internal_server_error, outcome_.error, "server_error", "engine_error");
        return;
    }
    if (outcome_.reason == FinishReason::cancelled) {
        // Cancelled with its client still here: the server is stopping.
        keep_alive_ = false;
        send_error(http::status::service_unavailable, "the server shut down before the completion finished",
                   "server_error", "service_unavailable");
        return;
    }
    BatchCompletion c;
    c.endpoint = completion_endpoint_;
    c.model = server_.model_name();
    c.text = std::move(text_);
    c.finish_reason = finish_reason_name(outcome_.reason);
    c.prompt_tokens = prompt_tokens_;
    c.completion_tokens = outcome_.completion_tokens;
    c.created = created_;
    send(http::status::ok,
         openai_completion_body(c, completion_id_).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace),
         "application/json");
}

void Session::send(http::status status, std::string body, const char* content_type, int retry_after) {
    count(int(status));
    phase_ = Phase::writing;
    res_ = {};
    res_.version(11);
    res_.result(status);
    res_.set(http::field::server, "sluice");
    res_.set(http::field::content_type, content_type);
    if (retry_after > 0) res_.set(http::field::retry_after, std::to_string(retry_after));
    if (status == http::status::unauthorized) res_.set(http::field::www_authenticate, "Bearer");
    res_.keep_alive(keep_alive_ && !server_.stopping());
    res_.body() = std::move(body);
    res_.prepare_payload();
    arm(server_.options().write_timeout_seconds);
    http::async_write(socket_, res_, [self = shared_from_this()](const error_code& ec, size_t) {
        self->disarm();
        if (ec || self->phase_ == Phase::closed) {
            self->close();
            return;
        }
        self->next_request();
    });
}

void Session::send_error(http::status status, std::string_view message, std::string_view type, std::string_view code,
                         std::string_view param, int retry_after) {
    send(status,
         openai_error_body(message, type, param, code).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace),
         "application/json", retry_after);
}

void Server::accept() {
    acceptor_.async_accept(asio::make_strand(io_), [this](const error_code& ec, tcp::socket socket) {
        if (ec) {
            if (!stopping_ && acceptor_.is_open()) accept();
            return;
        }
        ++http_.connections_total;
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        const bool full = int64_t(sessions_.size()) >= options_.max_connections;
        auto session = std::make_shared<Session>(std::move(socket), *this);
        if (full) {
            ++http_.connections_refused;
            session->refuse();
        } else {
            session->start();
        }
        accept();
    });
}

void Server::on_signal(const error_code& ec, int sig) {
    if (ec) return;
    if (!stopping_) {
        fmt::print(stderr, "serve: signal {}: not accepting; running requests have {:.0f} s to finish\n", sig,
                   options_.shutdown_timeout_seconds);
        begin_shutdown();
    } else {
        fmt::print(stderr, "serve: signal {} again: cancelling what runs\n", sig);
        engine_.stop(ServeClock::now());
    }
    signals_.async_wait([this](const error_code& e, int s) { on_signal(e, s); });
}

void Server::begin_shutdown() {
    stopping_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    engine_.stop(ServeClock::now() + seconds(options_.shutdown_timeout_seconds));
    // Kept-alive connections with no request in flight go now.
    std::vector<Session*> idle;
    for (Session* s : sessions_)
        if (s->idle()) idle.push_back(s);
    for (Session* s : idle) s->close();
}

void Server::wait_for_sessions() {
    bool busy = false;
    for (Session* s : sessions_) busy = busy || s->busy();
    if (!busy || std::chrono::steady_clock::now() >= exit_deadline_) {
        finish();
        return;
    }
    exit_timer_.expires_after(std::chrono::milliseconds(20));
    exit_timer_.async_wait([this](const error_code& ec) {
        if (!ec) wait_for_sessions();
    });
}

void Server::finish() {
    stopping_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    signals_.cancel(ignored);
    exit_timer_.cancel();
    std::vector<Session*> all(sessions_.begin(), sessions_.end());
    for (Session* s : all) s->close();
}

}  // namespace

int run_serve(const ServeOptions& options) {
    // The model's header, tokenizer and chat template now (no weights): requests are parsed and
    // tokenized on the event loop while the compute thread plans and loads.
    const auto model = open_model(options.engine.model);
    if (!model->tokenizer)
        fail(ErrorKind::invalid_input, "{}: the model has no tokenizer; sluice serve needs one", options.engine.model);
    // A client gone mid-write must not kill the process.
    std::signal(SIGPIPE, SIG_IGN);
    asio::io_context io(1);
    Server* server_ptr = nullptr;
    ServeEngine engine(options.engine, *model->tokenizer, [&io, &server_ptr] {
        asio::post(io, [&server_ptr] { server_ptr->on_engine_exit(); });
    });
    Server server(io, options, engine, *model);
    server_ptr = &server;
    server.start();
    fmt::print(stderr, "serve: listening on http://{}:{} (model {}; loading){}\n", options.host, server.port(),
               server.model_name(), options.api_key.empty() ? "" : ", API key required");
    engine.start();
    for (;;) {
        try {
            io.run();
            break;
        } catch (const std::exception& e) {
            // A handler that threw (out of memory, say) loses its connection, not the server.
            fmt::print(stderr, "serve: error in the event loop: {}\n", e.what());
        }
    }
    engine.stop(ServeClock::now());
    engine.join();
    if (const auto failure = engine.failure()) std::rethrow_exception(failure);
    fmt::print(stderr, "serve: stopped\n");
    return 0;
}

}  // namespace sluice
