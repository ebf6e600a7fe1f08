// `sluice serve`: the OpenAI-compatible HTTP server (engine/serve_http.hpp) over the batch
// scheduler: flags in, run_serve out.
#include "engine/cli/command.hpp"
#include "engine/runtime.hpp"
#include "engine/serve_http.hpp"

namespace sluice::cli {

void register_serve(CLI::App& app) {
    auto* sub = app.add_subcommand("serve", "Serve the OpenAI chat/completions API over HTTP, batching clients continuously");
    auto o = std::make_shared<ServeOptions>();
    sub->add_option("-m,--model", o->engine.model, "Model directory or .gguf file")->required();
    sub->add_option("--host", o->host, "Address to listen on (0.0.0.0: every interface)")->capture_default_str();
    sub->add_option("--port", o->port, "TCP port (0: any free one, printed)")->capture_default_str();
    sub->add_option("--api-key", o->api_key,
                    "Require 'Authorization: Bearer KEY' on /v1/* and /metrics (also from $SLUICE_API_KEY)")
        ->envname("SLUICE_API_KEY");
    sub->add_option("--model-name", o->model_name, "Model id in responses and /v1/models (default: the file name)");
    sub->add_option("--max-seqs", o->engine.max_sequences, "Requests running at once (latent cache slots)")
        ->capture_default_str();
    sub->add_option("--max-queue", o->engine.max_queue, "Requests waiting for a slot; beyond it, 429 with Retry-After")
        ->capture_default_str();
    sub->add_option("-c,--context", o->engine.context, "Positions per request (prompt + output)")->capture_default_str();
    sub->add_option("--prefill-chunk", o->engine.prefill_chunk, "Prompt positions a request takes per step")
        ->capture_default_str();
    sub->add_option("--max-step-tokens", o->engine.max_step_tokens,
                    "Most tokens in one step (0: max(512, max-seqs + prefill-chunk))")
        ->capture_default_str();
    sub->add_option("-t,--threads", o->engine.threads, "Compute threads (0 = all CPUs)")->capture_default_str();
    sub->add_option_function<std::string>(
        "--max-body", [o](const std::string& s) { o->max_body_bytes = parse_byte_size(s); },
        "Largest request body (413 beyond; default 1M)");
    sub->add_option_function<std::string>(
        "--max-header", [o](const std::string& s) { o->max_header_bytes = parse_byte_size(s); },
        "Largest request header block (431 beyond; default 16K)");
    sub->add_option("--header-timeout", o->header_timeout_seconds,
                    "Seconds a request may take to arrive, headers and body, from its first byte (408 beyond)")
        ->capture_default_str();
    sub->add_option("--idle-timeout", o->idle_timeout_seconds, "Seconds a kept-alive connection may wait idle")
        ->capture_default_str();
    sub->add_option("--write-timeout", o->write_timeout_seconds,
                    "Seconds one write may wait on a client that does not read (then it is dropped and its request cancelled)")
        ->capture_default_str();
    sub->add_option("--max-connections", o->max_connections, "Open connections at most (503 beyond)")
        ->capture_default_str();
    sub->add_option("--shutdown-timeout", o->shutdown_timeout_seconds,
                    "On SIGTERM / SIGINT: seconds running requests may take to finish before they are cancelled")
        ->capture_default_str();
    add_runtime_options(*sub, o->engine.runtime);
    add_command(app, sub, [o] { return run_serve(*o); });
}

}  // namespace sluice::cli
