#include "engine/background_segment_io.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace sluice {

BackgroundSegmentIo::BackgroundSegmentIo(SegmentIo& inner) : inner_(inner) {
    thread_ = std::thread([this] { run(); });
}

BackgroundSegmentIo::~BackgroundSegmentIo() {
    {
        std::lock_guard lock(mutex_);
        stop_ = true;
    }
    work_.notify_all();
    thread_.join();
}

bool BackgroundSegmentIo::register_buffers(std::span<const std::span<std::byte>> buffers) {
    std::lock_guard lock(mutex_);
    if (next_ticket_ != 1) fail(ErrorKind::internal, "register_buffers after the first read");
    return inner_.register_buffers(buffers);
}

uint64_t BackgroundSegmentIo::submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                                     const std::byte** extent_data) {
    uint64_t ticket;
    {
        std::lock_guard lock(mutex_);
        ticket = next_ticket_++;
        requests_.push_back(Request{ticket, {extents.begin(), extents.end()}, buffer, buffer_bytes, extent_data});
        outcomes_.emplace(ticket, Outcome{});
    }
    work_.notify_one();
    return ticket;
}

bool BackgroundSegmentIo::take_if_done(uint64_t ticket) {
    auto it = outcomes_.find(ticket);
    if (it == outcomes_.end()) fail(ErrorKind::internal, "unknown read ticket {}", ticket);
    if (!it->second.done) return false;
    const std::exception_ptr error = it->second.error;
    outcomes_.erase(it);
    if (error) std::rethrow_exception(error);
    return true;
}

bool BackgroundSegmentIo::poll(uint64_t ticket) {
    std::lock_guard lock(mutex_);
    return take_if_done(ticket);
}

void BackgroundSegmentIo::wait(uint64_t ticket) {
    std::unique_lock lock(mutex_);
    landed_.wait(lock, [&] { return take_if_done(ticket); });
}

size_t BackgroundSegmentIo::wait_any(std::span<const uint64_t> tickets) {
    if (tickets.empty()) fail(ErrorKind::internal, "wait_any on no tickets");
    std::unique_lock lock(mutex_);
    size_t which = 0;
    landed_.wait(lock, [&] {
        for (size_t i = 0; i < tickets.size(); ++i)
            if (take_if_done(tickets[i])) {
                which = i;
                return true;
            }
        return false;
    });
    return which;
}

void BackgroundSegmentIo::run() {
    std::vector<Request> batch;
    std::vector<uint64_t> inner_tickets, outer_tickets;  // outstanding, in step
    for (;;) {
        {
            std::unique_lock lock(mutex_);
            work_.wait(lock, [&] { return stop_ || !requests_.empty() || !inner_tickets.empty(); });
            if (stop_ && requests_.empty() && inner_tickets.empty()) return;
            batch.swap(requests_);
        }
        for (auto& r : batch) {
            try {
                inner_tickets.push_back(inner_.submit(r.extents, r.buffer, r.buffer_bytes, r.extent_data));
                outer_tickets.push_back(r.ticket);
            } catch (...) {
                std::lock_guard lock(mutex_);
                outcomes_[r.ticket] = Outcome{true, std::current_exception()};
                landed_.notify_all();
            }
        }
        batch.clear();
        if (inner_tickets.empty()) continue;
        // Block until the oldest segment lands (the reader serves its queue in order, so it is
        // normally the first to finish); the inner reader refills its queue meanwhile. Waiting on
        // one ticket also tells exactly whose read an error belongs to.
        const size_t which = 0;
        std::exception_ptr error;
        try {
            inner_.wait(inner_tickets.front());
        } catch (...) {
            error = std::current_exception();
        }
        {
            std::lock_guard lock(mutex_);
            outcomes_[outer_tickets[which]] = Outcome{true, error};
        }
        landed_.notify_all();
        inner_tickets.erase(inner_tickets.begin() + ptrdiff_t(which));
        outer_tickets.erase(outer_tickets.begin() + ptrdiff_t(which));
    }
}

}  // namespace sluice
