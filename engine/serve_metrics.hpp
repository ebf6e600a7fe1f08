// sluice serve's figures and their Prometheus text exposition (GET /metrics): the compute side's
// (requests, queue, tokens, bytes read, expert cache, overlap) as the engine last published them,
// and the HTTP side's (responses by endpoint and status, connections).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>

namespace sluice {

// Time to first token, histogram buckets (seconds; +Inf implied).
inline constexpr std::array<double, 10> kTtftBucketsSeconds = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

struct ServeEngineStats {
    bool ready = false;
    int max_sequences = 0;
    int active_sequences = 0;        // requests holding a slot
    int64_t queued = 0;              // accepted, waiting for a slot
    int64_t finished_stop = 0;       // by finish reason
    int64_t finished_length = 0;
    int64_t cancelled = 0;           // the client went away (or the stop deadline passed)
    int64_t failed = 0;              // a step failed under it (an I/O error reading the model)
    int64_t prompt_tokens = 0;       // prompt positions run
    int64_t output_tokens = 0;       // tokens generated
    int64_t steps = 0;
    double prompt_tokens_per_s = 0;  // over the last few seconds of steps
    double output_tokens_per_s = 0;
    uint64_t bytes_read = 0;         // weights read from disk
    int64_t experts_needed = 0;
    int64_t expert_cache_hits = 0;
    int64_t expert_prefetch_hits = 0;
    double step_seconds = 0;         // summed over steps
    double read_seconds = 0;
    double compute_seconds = 0;
    double overlap_efficiency = 0;   // max(read, compute) / step, over all steps
    std::array<int64_t, kTtftBucketsSeconds.size()> ttft_buckets{};  // cumulative counts
    int64_t ttft_count = 0;
    double ttft_sum_seconds = 0;
    void observe_ttft(double seconds);
};

struct ServeHttpStats {
    std::map<std::pair<std::string, int>, int64_t> responses;  // (endpoint, status) -> count
    int64_t connections_open = 0;
    int64_t connections_total = 0;
    int64_t connections_refused = 0;  // beyond --max-connections
};

std::string render_metrics(const ServeEngineStats& engine, const ServeHttpStats& http);

}  // namespace sluice
