#include "engine/serve_metrics.hpp"

#include <fmt/format.h>

namespace sluice {

void ServeEngineStats::observe_ttft(double seconds) {
    for (size_t i = 0; i < kTtftBucketsSeconds.size(); ++i)
        if (seconds <= kTtftBucketsSeconds[i]) ++ttft_buckets[i];
    ++ttft_count;
    ttft_sum_seconds += seconds;
}

namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

template <typename T>
void metric(std::string& out, const char* name, const char* type, const char* help, T value) {
    family(out, name, type, help);
    out += fmt::format("{} {}\n", name, value);
}

}  // namespace

std::string render_metrics(const ServeEngineStats& e, const ServeHttpStats& h) {
    std::string out;
    metric(out, "sluice_ready", "gauge", "1 once the model is planned and loaded", e.ready ? 1 : 0);
    family(out, "sluice_http_responses_total", "counter", "HTTP responses by endpoint and status code");
    for (const auto& [key, count] : h.responses)
        out += fmt::format("sluice_http_responses_total{{endpoint=\"{}\",code=\"{}\"}} {}\n", key.first, key.second, count);
    metric(out, "sluice_http_connections", "gauge", "Open client connections", h.connections_open);
    metric(out, "sluice_http_connections_total", "counter", "Client connections accepted", h.connections_total);
    metric(out, "sluice_http_connections_refused_total", "counter", "Connections refused beyond --max-connections",
           h.connections_refused);
    family(out, "sluice_requests_finished_total", "counter", "Completions finished, by reason");
    out += fmt::format("sluice_requests_finished_total{{reason=\"stop\"}} {}\n", e.finished_stop);
    out += fmt::format("sluice_requests_finished_total{{reason=\"length\"}} {}\n", e.finished_length);
    out += fmt::format("sluice_requests_finished_total{{reason=\"cancelled\"}} {}\n", e.cancelled);
    out += fmt::format("sluice_requests_finished_total{{reason=\"error\"}} {}\n", e.failed);
    metric(out, "sluice_queue_depth", "gauge", "Requests accepted and waiting for a sequence slot", e.queued);
    metric(out, "sluice_active_sequences", "gauge", "Requests holding a sequence slot (latent cache)",
           e.active_sequences);
    metric(out, "sluice_max_sequences", "gauge", "Sequence slots (--max-seqs)", e.max_sequences);
    metric(out, "sluice_prompt_tokens_total", "counter", "Prompt tokens run", e.prompt_tokens);
    metric(out, "sluice_output_tokens_total", "counter", "Tokens generated", e.output_tokens);
    metric(out, "sluice_prompt_tokens_per_second", "gauge", "Prompt tokens per second over the last seconds",
           e.prompt_tokens_per_s);
    metric(out, "sluice_output_tokens_per_second", "gauge", "Generated tokens per second over the last seconds",
           e.output_tokens_per_s);
    metric(out, "sluice_steps_total", "counter", "Forward steps run", e.steps);
    metric(out, "sluice_read_bytes_total", "counter", "Weight bytes read from disk", e.bytes_read);
    metric(out, "sluice_read_gigabytes_total", "counter", "Weight gigabytes (1e9 bytes) read from disk",
           double(e.bytes_read) / 1e9);
    metric(out, "sluice_experts_needed_total", "counter", "Routed experts the steps needed", e.experts_needed);
    metric(out, "sluice_expert_cache_hits_total", "counter", "Needed experts already in memory", e.expert_cache_hits);
    metric(out, "sluice_expert_prefetch_hits_total", "counter", "Needed experts read early on a prediction",
           e.expert_prefetch_hits);
    const double needed = double(e.experts_needed);
    metric(out, "sluice_expert_cache_hit_ratio", "gauge", "Expert cache hits / experts needed",
           needed > 0 ? double(e.expert_cache_hits) / needed : 0.0);
    metric(out, "sluice_expert_prefetch_hit_ratio", "gauge", "Expert prefetch hits / experts needed",
           needed > 0 ? double(e.expert_prefetch_hits) / needed : 0.0);
    metric(out, "sluice_step_seconds_total", "counter", "Seconds in forward steps", e.step_seconds);
    metric(out, "sluice_step_read_seconds_total", "counter", "Seconds of steps with a weight read in flight",
           e.read_seconds);
    metric(out, "sluice_step_compute_seconds_total", "counter", "Seconds of steps computing", e.compute_seconds);
    metric(out, "sluice_step_overlap_efficiency", "gauge",
           "max(read, compute) / step time over all steps: 1 when reading and computing overlap fully",
           e.overlap_efficiency);
    family(out, "sluice_time_to_first_token_seconds", "histogram", "From a request's arrival to its first token");
    for (size_t i = 0; i < kTtftBucketsSeconds.size(); ++i)
        out += fmt::format("sluice_time_to_first_token_seconds_bucket{{le=\"{}\"}} {}\n", kTtftBucketsSeconds[i],
                           e.ttft_buckets[i]);
    out += fmt::format("sluice_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}\n", e.ttft_count);
    out += fmt::format("sluice_time_to_first_token_seconds_sum {}\n", e.ttft_sum_seconds);
    out += fmt::format("sluice_time_to_first_token_seconds_count {}\n", e.ttft_count);
    return out;
}

}  // namespace sluice
