// Invariants of a --trace timeline (engine/trace.hpp), shared by the CPU streaming test and the
// device tests: what the pipeline promises, checked on what actually happened.
#pragma once

#include <doctest/doctest.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

namespace sluice::test {

struct TraceSpan {
    int track = 0;
    std::string name;
    int64_t start = 0, end = 0;
    nlohmann::json args;
    int layer() const { return args.value("layer", -99); }
    int expert() const { return args.value("expert", -1); }
};

inline std::vector<TraceSpan> trace_spans(const nlohmann::json& trace) {
    std::vector<TraceSpan> out;
    for (const auto& e : trace.at("traceEvents")) {
        if (e.at("ph") != "X") continue;
        const int64_t ts = e.at("ts"), dur = e.at("dur");
        REQUIRE(dur >= 0);
        out.push_back({e.at("tid").get<int>(), e.at("name").get<std::string>(), ts, ts + dur, e.value("args", nlohmann::json{})});
    }
    return out;
}

// Every span of `compute_name` on `compute_track` for a (layer, expert) starts no earlier than
// the end of the latest span of `data_name` on `data_track` for that segment that started before
// it: no compute on a segment before its bytes were there. Returns how many were checked.
inline int check_data_before_compute(const std::vector<TraceSpan>& spans, int data_track, const std::string& data_name,
                                     int compute_track, const std::string& compute_name) {
    int checked = 0;
    for (const auto& c : spans) {
        if (c.track != compute_track || c.name != compute_name) continue;
        const TraceSpan* latest = nullptr;
        for (const auto& d : spans)
            if (d.track == data_track && d.name == data_name && d.layer() == c.layer() && d.expert() == c.expert() &&
                d.start <= c.start && (!latest || d.start > latest->start))
                latest = &d;
        if (!latest) continue;  // found in a cache filled before the trace's window
        CAPTURE(c.layer());
        CAPTURE(c.expert());
        CHECK(latest->end <= c.start);
        ++checked;
    }
    return checked;
}

// A host buffer that a copy reads from is not refilled by a read before the copy ended: for each
// copy from host address X, no read into X starts inside the copy's interval. Copies are timed on
// the device's clock, reads on the host's: `clock_tolerance_us` is how far the two may disagree
// (the trace's otherData.device_clock_uncertainty_us).
inline int check_no_refill_during_copy(const std::vector<TraceSpan>& spans, int copy_track, int read_track,
                                       int64_t clock_tolerance_us) {
    int checked = 0;
    for (const auto& c : spans) {
        if (c.track != copy_track || !c.args.contains("host")) continue;
        for (const auto& r : spans) {
            if (r.track != read_track || r.args.value("host", std::string()) != c.args.at("host").get<std::string>()) continue;
            CAPTURE(r.name);
            CAPTURE(r.args.dump());
            CAPTURE(c.args.dump());
            CAPTURE(r.start);
            CAPTURE(c.start);
            CAPTURE(c.end);
            CAPTURE(clock_tolerance_us);
            CHECK_FALSE((r.start > c.start + clock_tolerance_us && r.start < c.end - clock_tolerance_us));
        }
        ++checked;
    }
    return checked;
}

// Some read was in flight while some compute ran.
inline bool reads_overlap_compute(const std::vector<TraceSpan>& spans, int read_track, int compute_track) {
    for (const auto& r : spans)
        if (r.track == read_track)
            for (const auto& c : spans)
                if (c.track == compute_track && r.start < c.end && c.start < r.end) return true;
    return false;
}

}  // namespace sluice::test
