// A SegmentIo over plain pread on a few reader threads, page cache and all. It is the portable
// fallback the streamer can always use, and, with a rate cap, the "reader throttled to a known
// rate" that the overlap tests need. The fast path is io/'s io_uring reader.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/segment_io.hpp"

namespace sluice {

class PreadSegmentIo final : public SegmentIo {
public:
    // rate_bytes_per_s > 0 caps the aggregate read rate (for tests and what-if runs).
    PreadSegmentIo(const FileSet& files, int n_threads = 2, double rate_bytes_per_s = 0);
    ~PreadSegmentIo() override;

    size_t buffer_bytes_for(std::span<const Extent> extents) const override;
    size_t buffer_alignment() const override { return 64; }
    uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                    const std::byte** extent_data) override;
    bool poll(uint64_t ticket) override;
    void wait(uint64_t ticket) override;
    size_t wait_any(std::span<const uint64_t> tickets) override;

private:
    struct Job {
        uint64_t ticket;
        std::vector<Extent> extents;
        std::byte* buffer;
        const std::byte** extent_data;
    };
    struct Done {
        bool finished = false;
        std::string error;
    };
    void worker();
    void run(Job& job);
    void rethrow_if_failed(uint64_t ticket, Done& done);

    std::vector<std::string> paths_;
    std::vector<int> fds_;
    double rate_bytes_per_s_;
    std::mutex mutex_;
    std::condition_variable work_;
    std::condition_variable finished_;
    std::deque<Job> queue_;
    std::unordered_map<uint64_t, Done> done_;
    uint64_t next_ticket_ = 1;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
    // Throttle: the time before which the next byte may not be delivered.
    double throttle_clock_s_ = 0;
};

}  // namespace sluice
