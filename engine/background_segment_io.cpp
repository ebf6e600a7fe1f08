#include "engine/background_segment_io.hpp"

#include <algorithm>
#include <bit>
#include <system_error>

#include "core/error.hpp"

namespace sluice {

BackgroundSegmentIo::BackgroundSegmentIo(SegmentIo& inner, size_t max_reads_outstanding, size_t max_extents_per_read)
    : inner_(inner), max_extents_per_read_(max_extents_per_read) {
    if (max_extents_per_read_ == 0) fail(ErrorKind::internal, "BackgroundSegmentIo with room for no extents per read");
    if (max_reads_outstanding > 0) size_slots(max_reads_outstanding);  // the thread is not running yet
    try {
        thread_ = std::thread([this] { run(); });
    } catch (const std::system_error& e) {
        // Nothing started: the typed error is all there is to do.
        fail(ErrorKind::out_of_memory, "could not start the background I/O thread: {}", e.code().message());
    }
}

BackgroundSegmentIo::~BackgroundSegmentIo() {
    {
        std::lock_guard lock(mutex_);
        stop_ = true;
    }
    work_.notify_all();
    thread_.join();
}

void BackgroundSegmentIo::size_slots(size_t n_slots) {
    if (n_slots > (size_t(1) << 24))
        fail(ErrorKind::internal, "BackgroundSegmentIo asked for {} read slots (at most 2^24)", n_slots);
    slots_.assign(n_slots, ReadSlot{});
    extent_store_.assign(n_slots * max_extents_per_read_, Extent{});
    free_slots_.clear();
    free_slots_.reserve(n_slots);
    for (size_t i = n_slots; i-- > 0;) free_slots_.push_back(uint32_t(i));  // slot 0 on top
    queued_ = SlotQueue{std::vector<uint32_t>(n_slots), 0, 0};
    in_flight_ = SlotQueue{std::vector<uint32_t>(n_slots), 0, 0};
    slot_bits_ = unsigned(std::bit_width(n_slots - 1));
}

std::span<Extent> BackgroundSegmentIo::extents_of(uint32_t slot) {
    return {extent_store_.data() + size_t(slot) * max_extents_per_read_, slots_[slot].n_extents};
}

bool BackgroundSegmentIo::register_buffers(std::span<const std::span<std::byte>> buffers) {
    std::lock_guard lock(mutex_);
    if (next_sequence_ != 1) fail(ErrorKind::internal, "register_buffers after the first read");
    if (buffers.size() > slots_.size()) size_slots(buffers.size());
    return inner_.register_buffers(buffers);
}

uint64_t BackgroundSegmentIo::submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                                     const std::byte** extent_data) {
    uint64_t ticket;
    {
        std::lock_guard lock(mutex_);
        if (slots_.empty())
            fail(ErrorKind::internal,
                 "BackgroundSegmentIo has no read slots: give it max_reads_outstanding or register the buffers first");
        if (extents.size() > max_extents_per_read_)
            fail(ErrorKind::internal, "a read of {} extents; BackgroundSegmentIo's slots hold {}", extents.size(),
                 max_extents_per_read_);
        if (free_slots_.empty())
            fail(ErrorKind::internal,
                 "all {} BackgroundSegmentIo read slots hold reads not yet handed back by poll, wait or wait_any",
                 slots_.size());
        const uint32_t slot = free_slots_.back();
        free_slots_.pop_back();
        ticket = (next_sequence_++ << slot_bits_) | slot;
        ReadSlot& s = slots_[slot];
        s.ticket = ticket;
        s.n_extents = extents.size();
        std::copy(extents.begin(), extents.end(), extents_of(slot).begin());
        s.buffer = buffer;
        s.buffer_bytes = buffer_bytes;
        s.extent_data = extent_data;
        s.landed = false;
        s.error = nullptr;
        queued_.push(slot);
    }
    work_.notify_one();
    return ticket;
}

uint32_t BackgroundSegmentIo::slot_of(uint64_t ticket) const {
    const uint64_t slot = ticket & ((uint64_t(1) << slot_bits_) - 1);
    if (ticket == 0 || slot >= slots_.size() || slots_[slot].ticket != ticket)
        fail(ErrorKind::internal, "unknown read ticket {}", ticket);
    return uint32_t(slot);
}

bool BackgroundSegmentIo::take_if_done(uint64_t ticket) {
    const uint32_t slot = slot_of(ticket);
    ReadSlot& s = slots_[slot];
    if (!s.landed) return false;
    const std::exception_ptr error = std::move(s.error);
    s.error = nullptr;
    s.ticket = 0;
    free_slots_.push_back(slot);  // within the capacity reserved: no allocation
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
            if (slots_[slot_of(tickets[i])].landed) {
                which = i;
                return true;
            }
        return false;
    });
    return which;
}

void BackgroundSegmentIo::land(uint32_t slot, std::exception_ptr error) {
    {
        std::lock_guard lock(mutex_);
        slots_[slot].landed = true;
        slots_[slot].error = std::move(error);
    }
    landed_.notify_all();
}

void BackgroundSegmentIo::hand_to_inner(uint32_t slot) {
    // The slot's request was written under the lock before it was queued, and stays put until
    // its outcome is handed back, which cannot happen before land.
    ReadSlot& s = slots_[slot];
    try {
        s.inner_ticket = inner_.submit(extents_of(slot), s.buffer, s.buffer_bytes, s.extent_data);
    } catch (...) {
        land(slot, std::current_exception());
        return;
    }
    in_flight_.push(slot);
}

void BackgroundSegmentIo::run() {
    for (;;) {
        uint32_t slot = 0;
        bool submitted = false;
        {
            std::unique_lock lock(mutex_);
            work_.wait(lock, [&] { return stop_ || !queued_.empty() || !in_flight_.empty(); });
            if (queued_.empty() && in_flight_.empty()) return;  // stop_, with nothing left to land
            if (!queued_.empty()) {
                slot = queued_.front();
                queued_.pop();
                submitted = true;
            }
        }
        // Everything submitted goes to the inner reader before the thread blocks in it.
        if (submitted) {
            hand_to_inner(slot);
            continue;
        }
        // Block until the oldest segment lands (the reader serves its queue in order, so it is
        // normally the first to finish); the inner reader refills its queue meanwhile. Waiting on
        // one ticket also tells exactly whose read an error belongs to.
        slot = in_flight_.front();
        in_flight_.pop();
        std::exception_ptr error;
        try {
            inner_.wait(slots_[slot].inner_ticket);
        } catch (...) {
            error = std::current_exception();
        }
        land(slot, std::move(error));
    }
}

}  // namespace sluice
