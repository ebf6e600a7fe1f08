#include "engine/batch_progress.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace sluice {

std::string format_duration(double seconds) {
    if (!(seconds >= 0) || seconds > 1e8) return "?";
    const int64_t s = int64_t(seconds + 0.5);
    if (s >= 3600) return fmt::format("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60);
    if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
    return fmt::format("{}s", s);
}

BatchProgress::BatchProgress(int64_t done_before, double interval_seconds, bool terminal)
    : done_before_(done_before), interval_s_(interval_seconds), terminal_(terminal) {}

double BatchProgress::elapsed_seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

std::string BatchProgress::line(const BatchProgressFigures& f) const {
    const double elapsed = elapsed_seconds();
    const int64_t done_now = f.done - done_before_;
    const double eta = f.work_done > 0 && f.work_total > 0
                           ? elapsed / double(f.work_done) * double(std::max<int64_t>(0, f.work_total - f.work_done))
                       : done_now > 0 ? elapsed / double(done_now) * double(f.total - f.done)
                                      : -1;
    return fmt::format("{}/{} requests, {:.2f} output tokens/s, ETA {}, {:.1f} GB read, expert hits {:.1f}%", f.done,
                       f.total, elapsed > 0 ? double(f.output_tokens) / elapsed : 0.0,
                       f.done >= f.total ? "0s" : format_duration(eta), double(f.bytes_read) / 1e9,
                       f.experts_needed ? 100.0 * double(f.experts_in_memory) / double(f.experts_needed) : 0.0);
}

void BatchProgress::update(const BatchProgressFigures& f, bool force) {
    const auto now = Clock::now();
    if (terminal_) {
        const std::string text = "batch: " + line(f);
        // Pad over what the previous line left, then return to the start of the line.
        fmt::print(stderr, "\r{:<{}}", text, last_width_);
        std::fflush(stderr);
        last_width_ = text.size();
        return;
    }
    if (!force && last_print_ != Clock::time_point{} &&
        std::chrono::duration<double>(now - last_print_).count() < interval_s_)
        return;
    last_print_ = now;
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    fmt::print(stderr, "{:%Y-%m-%dT%H:%M:%SZ} batch: {}\n", tm, line(f));
}

void BatchProgress::finish(const BatchProgressFigures& f, const std::string& outcome) {
    if (terminal_ && last_width_ > 0) fmt::print(stderr, "\n");
    fmt::print(stderr, "batch {}: {} in {}\n", outcome, line(f), format_duration(elapsed_seconds()));
}

}  // namespace sluice
