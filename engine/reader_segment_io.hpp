// io/'s SegmentReader (io_uring O_DIRECT with READ_FIXED, or its pread pool) as the streamer's
// SegmentIo; and a rate-capped decorator for what-if runs and the overlap tests ("the reader
// throttled to a known rate").
#pragma once

#include <chrono>
#include <memory>
#include <unordered_map>

#include "engine/segment_io.hpp"
#include "io/segment_reader.hpp"

namespace sluice {

class ReaderSegmentIo final : public SegmentIo {
public:
    ReaderSegmentIo(const FileSet& files, const io::ReaderOptions& options) : reader_(files, options) {}

    const char* backend_name() const { return reader_.backend_name(); }
    size_t buffer_bytes_for(std::span<const Extent> extents) const override {
        return io::SegmentReader::buffer_bytes_for(extents);
    }
    size_t buffer_alignment() const override { return io::SegmentReader::buffer_alignment(); }
    bool register_buffers(std::span<const std::span<std::byte>> buffers) override {
        return reader_.register_buffers(buffers);
    }
    uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                    const std::byte** extent_data) override {
        return reader_.submit(extents, buffer, buffer_bytes, extent_data);
    }
    bool poll(uint64_t ticket) override { return reader_.poll(ticket); }
    void wait(uint64_t ticket) override { reader_.wait(ticket); }
    size_t wait_any(std::span<const uint64_t> tickets) override { return reader_.wait_any(tickets); }

private:
    io::SegmentReader reader_;
};

// Delivers no faster than `bytes_per_s` overall: a segment counts as landed only once the
// inner read is done and the cap's clock has passed its last byte.
class RateCappedSegmentIo final : public SegmentIo {
public:
    RateCappedSegmentIo(SegmentIo& inner, double bytes_per_s) : inner_(inner), bytes_per_s_(bytes_per_s) {}

    size_t buffer_bytes_for(std::span<const Extent> extents) const override { return inner_.buffer_bytes_for(extents); }
    size_t buffer_alignment() const override { return inner_.buffer_alignment(); }
    bool register_buffers(std::span<const std::span<std::byte>> buffers) override {
        return inner_.register_buffers(buffers);
    }
    uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                    const std::byte** extent_data) override;
    bool poll(uint64_t ticket) override;
    void wait(uint64_t ticket) override;
    size_t wait_any(std::span<const uint64_t> tickets) override;

private:
    using Clock = std::chrono::steady_clock;
    SegmentIo& inner_;
    double bytes_per_s_;
    Clock::time_point cap_clock_{};
    struct Pending {
        Clock::time_point ready_at;
        bool inner_done = false;
    };
    std::unordered_map<uint64_t, Pending> pending_;
};

}  // namespace sluice
