// Drives a SegmentIo from its own thread, so reads keep flowing while compute runs. io/'s reader
// only refills its queue (queue_depth requests of request_bytes) when its owner calls poll or
// wait; driven from the compute thread, the queue drained within ~20 ms of each long GEMM or
// attention pass and the disk sat idle (prefill of 512 tokens on the 5-layer V3 Q4_K model:
// reads in flight 22.6 s for 25.4 GB, 1.12 GB/s against the 1.9 GB/s bench-io measures).
// The thread blocks in the inner wait for its oldest segment while reads are outstanding (no
// spinning: the cores compute), and on a condition variable when none are. A submit made while it blocks is picked
// up when the next segment lands, or at once when nothing is outstanding.
//
// Nothing here allocates once the reads start: a read lives in one of a fixed set of slots,
// sized before the first submit (one per registered buffer, since a buffer is the target of at
// most one read at a time), from submit until poll or wait hands its outcome back.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/segment_io.hpp"

namespace sluice {

class BackgroundSegmentIo final : public SegmentIo {
public:
    // A DeepSeek-V3 segment flattens to at most 16 extents (a dense layer's 8 FP8 matrices and
    // their scales); twice that leaves room without a caller having to count.
    static constexpr size_t default_max_extents_per_read = 32;

    // max_reads_outstanding: slots for reads submitted and not yet handed back; 0 leaves the
    // sizing to register_buffers (one slot per buffer), which callers that register call anyway.
    // Throws ErrorKind::out_of_memory when the OS refuses the thread.
    explicit BackgroundSegmentIo(SegmentIo& inner, size_t max_reads_outstanding = 0,
                                 size_t max_extents_per_read = default_max_extents_per_read);
    ~BackgroundSegmentIo() override;  // lets reads in flight land, then stops the thread
    BackgroundSegmentIo(const BackgroundSegmentIo&) = delete;
    BackgroundSegmentIo& operator=(const BackgroundSegmentIo&) = delete;

    size_t buffer_bytes_for(std::span<const Extent> extents) const override { return inner_.buffer_bytes_for(extents); }
    size_t buffer_alignment() const override { return inner_.buffer_alignment(); }
    // Call before the first submit (the thread does not touch the inner reader until then).
    // Raises the slot count to one per buffer if the constructor asked for fewer.
    bool register_buffers(std::span<const std::span<std::byte>> buffers) override;
    // Fails (ErrorKind::internal) rather than grow when every slot holds a read not yet handed
    // back, or when the extents outnumber a slot's max_extents_per_read.
    uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                    const std::byte** extent_data) override;
    bool poll(uint64_t ticket) override;
    void wait(uint64_t ticket) override;
    size_t wait_any(std::span<const uint64_t> tickets) override;

    size_t max_reads_outstanding() const { return slots_.size(); }

private:
    // One read, from submit until its outcome is handed back. A ticket is
    // (submit sequence << slot_bits_) | slot index: it rises with every submit, never repeats,
    // and names its slot, so poll and wait find the outcome without a search. ticket == 0 marks
    // a free slot (sequences start at 1).
    struct ReadSlot {
        uint64_t ticket = 0;
        size_t n_extents = 0;            // in extent_store_[slot * max_extents_per_read_ ...]
        std::byte* buffer = nullptr;
        size_t buffer_bytes = 0;
        const std::byte** extent_data = nullptr;
        uint64_t inner_ticket = 0;       // the background thread's alone
        bool landed = false;
        std::exception_ptr error;        // the inner reader's, for this read only
    };
    // Slot indices in first-in first-out order, in storage sized once.
    struct SlotQueue {
        std::vector<uint32_t> ring;
        size_t head = 0;
        size_t count = 0;
        bool empty() const { return count == 0; }
        uint32_t front() const { return ring[head]; }
        void push(uint32_t slot) { ring[(head + count++) % ring.size()] = slot; }
        void pop() {
            head = (head + 1) % ring.size();
            --count;
        }
    };

    void size_slots(size_t n_slots);  // under the lock, before the first submit
    std::span<Extent> extents_of(uint32_t slot);
    void run();
    void hand_to_inner(uint32_t slot);
    void land(uint32_t slot, std::exception_ptr error);
    // Under the lock: the ticket's slot (an internal error for a ticket not outstanding).
    uint32_t slot_of(uint64_t ticket) const;
    // Under the lock: true (and frees the slot, rethrowing its error) once it has landed.
    bool take_if_done(uint64_t ticket);

    SegmentIo& inner_;
    const size_t max_extents_per_read_;
    std::mutex mutex_;
    std::condition_variable work_;    // new requests or stop, for the thread
    std::condition_variable landed_;  // a ticket finished, for the caller
    std::vector<ReadSlot> slots_;
    std::vector<Extent> extent_store_;     // max_extents_per_read_ per slot
    std::vector<uint32_t> free_slots_;     // a stack; capacity reserved to slots_.size()
    SlotQueue queued_;                     // submitted, not yet handed to the inner reader
    SlotQueue in_flight_;                  // handed to the inner reader, oldest first; the thread's alone
    unsigned slot_bits_ = 0;
    uint64_t next_sequence_ = 1;
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace sluice
