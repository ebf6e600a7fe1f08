#include "engine/trace.hpp"

#include <fstream>

#include "core/error.hpp"

namespace sluice {

Trace::Trace() : origin_(Clock::now()) { spans_.reserve(1 << 16); }

void Trace::add(Track track, std::string name, int64_t start_us, int64_t end_us, nlohmann::json args) {
    std::lock_guard lock(mutex_);
    spans_.push_back({track, std::move(name), start_us, std::max(end_us, start_us), std::move(args)});
}

std::vector<Trace::Span> Trace::spans() const {
    std::lock_guard lock(mutex_);
    return spans_;
}

const char* Trace::track_name(Track track) {
    switch (track) {
        case Track::compute: return "compute (host)";
        case Track::reads: return "reads (disk -> host)";
        case Track::waits: return "waits (compute blocked on data)";
        case Track::copies: return "copies (host -> device)";
        case Track::device: return "device compute";
    }
    return "?";
}

nlohmann::json Trace::to_json() const {
    nlohmann::json events = nlohmann::json::array();
    for (const Track t : {Track::compute, Track::reads, Track::waits, Track::copies, Track::device}) {
        events.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", 1}, {"tid", int(t)},
                          {"args", {{"name", track_name(t)}}}});
        events.push_back({{"ph", "M"}, {"name", "thread_sort_index"}, {"pid", 1}, {"tid", int(t)},
                          {"args", {{"sort_index", int(t)}}}});
    }
    events.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", 1}, {"args", {{"name", "sluice"}}}});
    for (const auto& s : spans()) {
        nlohmann::json e = {{"name", s.name}, {"ph", "X"}, {"pid", 1}, {"tid", int(s.track)},
                            {"ts", s.start_us}, {"dur", s.end_us - s.start_us}};
        if (!s.args.is_null()) e["args"] = s.args;
        events.push_back(std::move(e));
    }
    return {{"traceEvents", std::move(events)},
            {"displayTimeUnit", "ms"},
            {"otherData", {{"device_clock_uncertainty_us", device_clock_uncertainty_us_}}}};
}

void Trace::write(const std::string& path) const {
    std::ofstream out(path);
    if (!out) fail(ErrorKind::io, "{}: cannot write the trace", path);
    out << to_json().dump() << '\n';
    if (!out) fail(ErrorKind::io, "{}: writing the trace failed", path);
}

}  // namespace sluice
