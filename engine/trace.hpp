// A timeline of a run in Chrome's trace-event JSON (opens in Perfetto or chrome://tracing):
// each read from disk (file, bytes, which segment, into which buffer), each host->device copy,
// each group of kernels per layer and expert, each wait, on one track per kind. `--trace FILE`
// on run and bench writes it; the tests read it back and check the pipeline's invariants (no
// compute on a segment before its copy ended, no staging buffer refilled before its copy ended,
// reads overlapping compute).
//
// Spans are recorded from several threads (the compute thread, the reader's, a device backend
// resolving its event timestamps), so recording takes a lock. Tracing is off unless asked for:
// the step loop pays one null check per span then.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sluice {

class Trace {
public:
    // Tracks (Chrome "threads"), in the order the viewer shows them.
    enum class Track : int { compute = 1, reads = 2, waits = 3, copies = 4, device = 5 };
    using Clock = std::chrono::steady_clock;

    struct Span {
        Track track;
        std::string name;
        int64_t start_us = 0;
        int64_t end_us = 0;
        nlohmann::json args;
    };

    Trace();

    // Microseconds since the trace started.
    int64_t now_us() const { return to_us(Clock::now()); }
    int64_t to_us(Clock::time_point t) const {
        return std::chrono::duration_cast<std::chrono::microseconds>(t - origin_).count();
    }
    void add(Track track, std::string name, int64_t start_us, int64_t end_us, nlohmann::json args = {});
    // Device spans are timed on the device's clock and placed on the host's through one anchor
    // event; this is how far off that placement may be (half the anchor's host-side window).
    void set_device_clock_uncertainty_us(int64_t us) { device_clock_uncertainty_us_ = us; }
    int64_t device_clock_uncertainty_us() const { return device_clock_uncertainty_us_; }

    std::vector<Span> spans() const;
    nlohmann::json to_json() const;
    // Writes the JSON to `path` (a clear error naming it when that fails).
    void write(const std::string& path) const;

    static const char* track_name(Track track);

private:
    Clock::time_point origin_;
    mutable std::mutex mutex_;
    std::vector<Span> spans_;
    int64_t device_clock_uncertainty_us_ = 0;
};

}  // namespace sluice
