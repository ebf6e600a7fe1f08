// Progress of a batch job a person can follow: on a terminal one line rewritten in place, else a
// timestamped line every interval; both give requests done / total, output tokens/s, ETA, GB read
// and the expert cache hit rate. A summary closes the job.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace sluice {

struct BatchProgressFigures {
    int64_t done = 0;            // requests with a record (this run and before)
    int64_t total = 0;           // requests of this job (this shard)
    int64_t output_tokens = 0;   // generated this run (as they are made, not when requests finish)
    // Tokens of work this run: every request's prompt plus its max_tokens; done: prompt tokens
    // computed, tokens generated, and the budget a request left unused when it stopped early. The
    // ETA comes from them: a job of long outputs finishes no request for its first half hour.
    int64_t work_total = 0;
    int64_t work_done = 0;
    uint64_t bytes_read = 0;     // weights and spilled caches read this run
    int64_t experts_needed = 0;
    int64_t experts_in_memory = 0;  // needed experts already cached or prefetched
};

class BatchProgress {
public:
    // done_before: requests already done when this run started (a resumed job).
    BatchProgress(int64_t done_before, double interval_seconds, bool terminal);
    void update(const BatchProgressFigures& f, bool force = false);
    // The closing summary (one line, after the updating one is ended).
    void finish(const BatchProgressFigures& f, const std::string& outcome);
    double elapsed_seconds() const;

    // The figures as one line (without the timestamp or "batch: ").
    std::string line(const BatchProgressFigures& f) const;

private:
    using Clock = std::chrono::steady_clock;
    int64_t done_before_;
    double interval_s_;
    bool terminal_;
    Clock::time_point start_ = Clock::now(), last_print_{};
    size_t last_width_ = 0;
};

std::string format_duration(double seconds);  // "1h02m03s", "4m05s", "12s"

}  // namespace sluice
