// sluice serve's compute side: one thread owns the model, the forward pass and the batch
// scheduler (the same continuous batching as sluice batch) and runs steps while requests wait or
// run. The HTTP event loop (engine/serve_http) hands it requests through a small locked inbox; it
// hands text back through each request's outbox, waking the request's session only when the
// outbox goes from quiet to pending, so a burst of tokens costs one wake-up. A request whose
// client went away is flagged by its session and cancelled before the next step, freeing its slot.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/batch_scheduler.hpp"
#include "engine/completion_text.hpp"
#include "engine/runtime.hpp"
#include "engine/sampler.hpp"
#include "engine/serve_metrics.hpp"

namespace sluice {

class ThreadPool;

struct ServeEngineOptions {
    std::string model;
    int max_sequences = 32;         // sequence slots (latent caches) running at once
    int64_t max_queue = 64;         // accepted requests waiting for a slot; more get 429
    int64_t context = 4096;         // positions per slot (prompt + output)
    int64_t prefill_chunk = 256;
    int64_t max_step_tokens = 0;    // 0: max(512, max_sequences + prefill_chunk)
    int threads = 0;
    RuntimeOptions runtime;
};

using ServeClock = std::chrono::steady_clock;

// One completion request between a session and the engine.
struct ServeRequest {
    // Set by the session before submit; read-only afterwards.
    std::vector<int32_t> prompt;
    int64_t max_tokens = 1;
    SamplerOptions sampler;
    bool stop_at_eos = true;
    std::vector<std::string> stop;
    ServeClock::time_point arrived{};
    // Called on the compute thread when the outbox has news and no wake-up is in flight; posts to
    // the session's strand (which then calls take()).
    std::function<void()> wake;

    // Set by the session (any time): its client went away; cancelled before the next step.
    std::atomic<bool> cancel{false};

    // The outbox, under `mutex`.
    struct Outbox {
        std::string text;           // ready text not yet taken
        bool done = false;
        FinishReason reason = FinishReason::length;
        int64_t completion_tokens = 0;
        std::string error;          // cancelled by an engine error (a failed read): what it said
    };
    // Moves the ready text onto the end of `text` (no allocation once `text` has grown) and
    // returns the rest of the outbox's state.
    Outbox take(std::string& text);

    // Compute thread only.
    std::optional<CompletionText> completion;
    bool first_token_seen = false;

private:
    friend class ServeEngine;
    std::mutex mutex_;
    Outbox outbox_;
    bool woken_ = false;            // a wake-up is in flight
};

class ServeEngine {
public:
    // `on_exit` runs on the compute thread when it ends (stopped, or failed to load).
    ServeEngine(ServeEngineOptions options, const Tokenizer& tokenizer, std::function<void()> on_exit);
    ~ServeEngine();

    // Starts the compute thread: plans and loads the model, then serves.
    void start();
    void join();

    enum class Admission { accepted, queue_full, not_ready, stopping };
    Admission submit(std::shared_ptr<ServeRequest> request);

    // Stops accepting; requests still running at `deadline` are cancelled; the thread then ends.
    void stop(ServeClock::time_point deadline);

    bool ready() const { return ready_.load(); }
    // Why loading failed (rethrown by the caller after the event loop ends), or null.
    std::exception_ptr failure() const { return failure_; }
    ServeEngineStats stats() const;
    // A client refused for a full queue may come back after about this long.
    int retry_after_seconds() const;
    const ServeEngineOptions& options() const { return options_; }

private:
    void run();
    // Serves until stopped (false), or until a step fails on an I/O error (true): the running
    // requests then have their error and the waiting ones are back in the inbox, for a runtime
    // made afresh.
    bool serve(Runtime& runtime, ThreadPool& pool);
    static void publish(ServeRequest& r, const std::string& text, const FinishReason* finished, int64_t tokens,
                        const std::string& error = {});

    ServeEngineOptions options_;
    const Tokenizer& tokenizer_;
    std::function<void()> on_exit_;
    std::thread thread_;
    std::atomic<bool> ready_{false};
    std::exception_ptr failure_;

    // The inbox (submit -> compute thread).
    std::mutex inbox_mutex_;
    std::condition_variable inbox_cv_;
    std::vector<std::shared_ptr<ServeRequest>> inbox_;
    bool stopping_ = false;
    ServeClock::time_point stop_deadline_{};
    std::atomic<int64_t> in_system_{0};   // accepted, not yet finished

    mutable std::mutex stats_mutex_;
    ServeEngineStats stats_;
    double mean_request_seconds_ = 0;
    // Recent steps, for the tokens/s gauges.
    struct RecentStep {
        ServeClock::time_point begin, end;
        int64_t prompt = 0, output = 0;
    };
    static constexpr double kRateWindowSeconds = 10;
    std::array<RecentStep, 256> recent_{};
    size_t n_recent_ = 0;
};

}  // namespace sluice
