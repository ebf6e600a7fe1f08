#include "engine/reader_segment_io.hpp"

#include <thread>

namespace sluice {

uint64_t RateCappedSegmentIo::submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                                     const std::byte** extent_data) {
    uint64_t bytes = 0;
    for (const auto& e : extents) bytes += e.length;
    const uint64_t ticket = inner_.submit(extents, buffer, buffer_bytes, extent_data);
    cap_clock_ = std::max(cap_clock_, Clock::now()) +
                 std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(double(bytes) / bytes_per_s_));
    pending_[ticket] = Pending{cap_clock_, false};
    return ticket;
}

// A failed inner read is handed back with its error at once (the cap is for bytes that land).
bool RateCappedSegmentIo::poll(uint64_t ticket) {
    auto it = pending_.find(ticket);
    if (it == pending_.end()) return true;
    if (!it->second.inner_done) {
        try {
            it->second.inner_done = inner_.poll(ticket);
        } catch (...) {
            pending_.erase(it);
            throw;
        }
    }
    if (!it->second.inner_done || Clock::now() < it->second.ready_at) return false;
    pending_.erase(it);
    return true;
}

void RateCappedSegmentIo::wait(uint64_t ticket) {
    auto it = pending_.find(ticket);
    if (it == pending_.end()) return;
    if (!it->second.inner_done) {
        try {
            inner_.wait(ticket);
        } catch (...) {
            pending_.erase(it);
            throw;
        }
        it->second.inner_done = true;
    }
    std::this_thread::sleep_until(it->second.ready_at);
    pending_.erase(it);
}

size_t RateCappedSegmentIo::wait_any(std::span<const uint64_t> tickets) {
    // The earliest deadline among them is the first that can be ready: its inner read has
    // completed once inner wait_any on it alone returns (poll or wait then hands it back).
    size_t best = 0;
    for (size_t i = 0; i < tickets.size(); ++i) {
        auto it = pending_.find(tickets[i]);
        if (it == pending_.end()) return i;
        if (pending_.at(tickets[best]).ready_at > it->second.ready_at) best = i;
    }
    const Pending& p = pending_.at(tickets[best]);
    if (!p.inner_done) inner_.wait_any(tickets.subspan(best, 1));
    std::this_thread::sleep_until(p.ready_at);
    return best;
}

}  // namespace sluice
