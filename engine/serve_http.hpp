// sluice serve: an OpenAI-compatible HTTP/1.1 server on Boost.Asio and Boost.Beast in front of
// the compute thread (engine/serve_engine). One event loop owns the sockets, timers and signals;
// POST /v1/chat/completions and /v1/completions (JSON or server-sent events), GET /v1/models,
// /health and /metrics (Prometheus). Protection: loopback unless told, an optional bearer key,
// body and header size limits, header / idle / write timeouts, a connection cap and the engine's
// queue bound (429 with Retry-After). SIGTERM / SIGINT stop accepting and let running requests
// finish until the shutdown deadline, then cancel them; the process exits 0.
#pragma once

#include <cstddef>
#include <string>

#include "engine/serve_engine.hpp"

namespace sluice {

struct ServeOptions {
    ServeEngineOptions engine;
    std::string host = "127.0.0.1";
    int port = 8080;                       // 0: any free port (printed)
    std::string api_key;                   // empty: none asked
    std::string model_name;                // empty: the model file or directory name
    size_t max_body_bytes = size_t(1) << 20;
    size_t max_header_bytes = size_t(16) << 10;
    double header_timeout_seconds = 10;    // a request's headers and body, from its first byte
    double idle_timeout_seconds = 30;      // a kept-alive connection waiting for its next request
    double write_timeout_seconds = 30;     // one write to a client that does not read
    int max_connections = 256;
    double shutdown_timeout_seconds = 30;  // SIGTERM: running requests get this long to finish
};

// Runs until SIGTERM / SIGINT; returns the exit code (0 after a graceful stop). Throws the
// engine's error when the model cannot be planned or loaded.
int run_serve(const ServeOptions& options);

}  // namespace sluice
