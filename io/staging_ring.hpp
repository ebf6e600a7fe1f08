// The staging ring: N equal slots allocated once (2 MiB aligned, MADV_HUGEPAGE so a large read
// is few device segments, touched up front, mlock'd when RLIMIT_MEMLOCK allows). The producer
// acquires slots in order, fills them (SegmentReader::submit), hands them to a consumer, which
// releases them in the same order. Nothing here allocates after construction.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "io/extent.hpp"

namespace sluice::io {

struct StagingSlot {
    uint32_t index = 0;               // position in the ring
    std::span<std::byte> bytes;       // the slot's memory
    uint64_t segment_id = 0;          // set by SegmentReader::submit
    uint64_t ticket = 0;              // the read filling it
    size_t n_extents = 0;
    std::vector<const std::byte*> extent_data;  // per extent: its first byte inside `bytes`
    std::vector<uint64_t> extent_length;
    std::span<const std::byte> extent(size_t i) const { return {extent_data[i], size_t(extent_length[i])}; }
};

class StagingRing {
public:
    StagingRing(size_t n_slots, size_t slot_bytes, size_t max_extents_per_slot = 256);
    ~StagingRing();
    StagingRing(const StagingRing&) = delete;
    StagingRing& operator=(const StagingRing&) = delete;

    size_t n_slots() const { return slots_.size(); }
    size_t slot_bytes() const { return slot_bytes_; }
    size_t max_extents_per_slot() const { return max_extents_; }
    bool memory_locked() const { return memory_locked_; }
    // Page-locked for a CUDA device (cudaHostRegister); false without CUDA or a device.
    bool pinned_for_device() const { return pinned_; }
    // The whole allocation as one region, for io_uring buffer registration.
    std::span<const std::span<std::byte>> regions() const { return {&region_, 1}; }

    // The next slot in ring order; blocks while it is still held by the consumer.
    StagingSlot& acquire();
    // nullptr when the next slot is still held.
    StagingSlot* try_acquire();
    // Gives back the oldest outstanding slot; anything else is a bug (ErrorKind::internal).
    void release(StagingSlot& slot);
    size_t outstanding() const;

private:
    size_t slot_bytes_;
    size_t max_extents_;
    AlignedBuffer memory_;
    std::span<std::byte> region_;
    bool memory_locked_ = false;
    bool pinned_ = false;
    std::vector<StagingSlot> slots_;
    mutable std::mutex mutex_;
    std::condition_variable released_;
    uint64_t acquired_count_ = 0;  // slots handed out so far (next = acquired_count_ % n)
    uint64_t released_count_ = 0;
};

}  // namespace sluice::io
