// What the streamer needs from io/: start reading a segment's extents into a buffer it owns,
// learn when the bytes have landed, and where each extent's exact bytes lie in the buffer
// (reads are rounded out to the device block for O_DIRECT). engine/reader_segment_io.hpp
// adapts io/'s reader to it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "io/extent.hpp"

namespace sluice {

class SegmentIo {
public:
    virtual ~SegmentIo() = default;

    // Bytes a buffer must have to receive these extents (each rounded out to the device block).
    virtual size_t buffer_bytes_for(std::span<const Extent> extents) const = 0;
    // Alignment the destination buffers must have.
    virtual size_t buffer_alignment() const = 0;
    // The buffers later submits land in, once at start (io_uring registers them for
    // READ_FIXED). False when the reader keeps plain reads.
    virtual bool register_buffers(std::span<const std::span<std::byte>> /*buffers*/) { return false; }

    // Starts reading; `extent_data` (extents.size() entries) receives, once the ticket has
    // completed, the address of each extent's first byte inside `buffer`.
    virtual uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                            const std::byte** extent_data) = 0;
    // True once the ticket's bytes have all landed. Throws the read's error (naming file,
    // offset and length) if it failed.
    virtual bool poll(uint64_t ticket) = 0;
    // Blocks until the ticket has completed (throws its error if it failed).
    virtual void wait(uint64_t ticket) = 0;
    // Blocks until at least one of `tickets` has completed (landed or failed) and returns its
    // index in the span. It hands nothing back: poll or wait on that ticket then returns at once,
    // true or with the read's error, so a caller always knows whose read failed.
    virtual size_t wait_any(std::span<const uint64_t> tickets) = 0;
};

}  // namespace sluice
