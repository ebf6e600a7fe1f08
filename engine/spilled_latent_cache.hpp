// The MLA latent cache beyond RAM (FlexGen's lesson: offload the cache too). Layers below
// `resident_layers` keep their caches in memory; the others live in a spill file, one region per
// (sequence, layer), and stream through a buffer beside the weights: when a step starts, the
// caches it will ask for are read in the order it will ask (layer by layer, its sequences in
// step order) as far ahead as the buffer allows, so a layer's caches land while the layers before
// it compute. After a sequence's attention, the pages holding its new positions are written back
// (O_DIRECT, on a writer thread, in release order) and, once written, its buffer space goes to the
// next read; a step ends when its writes have landed. A job's batch is then limited by disk
// rather than RAM: memory holds the resident layers and the buffer only.
//
// Reads go through io/'s reader (io_uring O_DIRECT, engine/segment_io.hpp) on its own thread;
// the buffer is host memory, so this serves host backends (the CPU).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "engine/latent_cache.hpp"
#include "engine/segment_io.hpp"
#include "io/segment_reader.hpp"

namespace sluice {

struct SpillOptions {
    std::string path;               // the spill file: created (sparse), its name removed once open
    int resident_layers = 0;        // layers [0, resident_layers) stay in memory
    uint64_t buffer_bytes = 0;      // memory the spilled layers' caches stream through
    io::ReaderOptions reader;
};

class SpilledLatentCache final : public LatentCache {
public:
    // Bytes one (sequence, layer) cache of `capacity` positions takes in the file and, at most, in
    // the buffer (latents and roped keys, each rounded up to 4 KiB).
    static uint64_t slot_bytes(const ModelLayout& layout, int64_t capacity);

    SpilledLatentCache(const ModelLayout& layout, int n_sequences, int64_t capacity, Backend& backend,
                       const SpillOptions& options);
    ~SpilledLatentCache() override;

    int64_t capacity() const override { return capacity_; }
    void begin_step(std::span<const LatentCacheUse> uses) override;
    LatentCacheEntry acquire(int layer, int sequence) override;
    void release(int layer, int sequence) override;
    void end_step() override;

    uint64_t bytes_read() const { return bytes_read_; }
    uint64_t bytes_written() const { return bytes_written_.load(std::memory_order_relaxed); }
    // Time the computation spent blocked on this cache, since it was made: waiting for a cache's
    // read to land (acquire), and for write-backs (buffer space they still hold, or the end of
    // the step). It counts as compute in the streamer's figures, which see only the weights' reads.
    double read_wait_seconds() const { return read_wait_seconds_; }
    double write_seconds() const { return write_wait_seconds_; }

private:
    struct Pending {  // one (layer, sequence) cache of the step, in the order it will be asked for
        int layer = 0, sequence = 0;
        int64_t first_new = 0, positions = 0;
        uint64_t latent_bytes = 0, rope_bytes = 0;  // read (rounded to 4 KiB)
        uint64_t offset = 0;                         // in the buffer
        uint64_t ticket = 0;
        const std::byte* extent_data[2] = {};
        bool landed = false;
    };
    uint64_t file_offset(int layer, int sequence) const;
    void issue_reads();
    bool allocate(uint64_t bytes, uint64_t& offset);
    void write_back(const Pending& p);   // on the writer thread
    void writer_loop();
    // Blocks until the writer has written more than `written` caches (or failed, or has nothing
    // left); the time goes to write_wait_seconds_.
    void wait_for_writes(size_t written);
    // Blocks until every released cache is written back; throws the writer's error if it failed.
    void drain_writes();
    void throw_if_write_failed();

    const ModelLayout layout_;
    int64_t capacity_;
    SpillOptions options_;
    ResidentLatentCache resident_;
    uint64_t latent_region_ = 0, region_ = 0;  // per (sequence, layer) in the file
    int fd_ = -1;                              // O_DIRECT writes
    std::unique_ptr<SegmentIo> reader_, background_;
    AlignedBuffer buffer_;
    // The step's schedule and a FIFO of buffer space: [tail_, head_) wrapping, `used_` bytes.
    std::vector<Pending> schedule_;
    size_t next_acquire_ = 0, next_read_ = 0, next_release_ = 0;
    uint64_t head_ = 0, tail_ = 0, used_ = 0, wrap_waste_ = 0;
    std::vector<Extent> extents_;
    uint64_t bytes_read_ = 0;
    double read_wait_seconds_ = 0, write_wait_seconds_ = 0;
    // Write-back on its own thread: a released cache's new pages go to the file while the step
    // computes on (written synchronously on the compute thread they took 3.5-5.2 s of 15-18 s
    // steps of ~200 sequences, 2 ms a 4 KiB O_DIRECT write behind the weights' reads). Caches are
    // written in release order: schedule_[0, written_) are on disk, and their buffer space free.
    std::thread writer_;
    std::mutex write_mutex_;
    std::condition_variable write_cv_;   // the writer: more released, or stop
    std::condition_variable written_cv_; // the compute thread: more written, or failed
    size_t released_ = 0;                // schedule_[0, released_) handed to the writer (under write_mutex_)
    std::atomic<size_t> written_{0};
    std::atomic<bool> write_failed_{false};
    std::string write_error_;            // under write_mutex_
    bool stop_ = false;                  // under write_mutex_
    std::atomic<uint64_t> bytes_written_{0};
};

}  // namespace sluice
