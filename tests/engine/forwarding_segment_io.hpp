// A SegmentIo that passes every call to another: tests derive from it to watch or break the
// reads the streamer makes (refuse the n-th, record what is outstanding, check the buffer).
#pragma once

#include "engine/segment_io.hpp"

namespace sluice::test {

class ForwardingSegmentIo : public SegmentIo {
public:
    explicit ForwardingSegmentIo(SegmentIo& inner) : inner_(inner) {}
    size_t buffer_bytes_for(std::span<const Extent> extents) const override { return inner_.buffer_bytes_for(extents); }
    size_t buffer_alignment() const override { return inner_.buffer_alignment(); }
    bool register_buffers(std::span<const std::span<std::byte>> buffers) override {
        return inner_.register_buffers(buffers);
    }
    uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                    const std::byte** extent_data) override {
        return inner_.submit(extents, buffer, buffer_bytes, extent_data);
    }
    bool poll(uint64_t ticket) override { return inner_.poll(ticket); }
    void wait(uint64_t ticket) override { inner_.wait(ticket); }
    size_t wait_any(std::span<const uint64_t> tickets) override { return inner_.wait_any(tickets); }

protected:
    SegmentIo& inner_;
};

}  // namespace sluice::test
