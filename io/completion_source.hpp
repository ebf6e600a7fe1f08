// The seam between the segment reader's bookkeeping (splitting, retries, short reads, errors)
// and whatever actually performs reads: io_uring, a pread thread pool, or a test's fault
// injector wrapped around either. Everything above this line is the real retry code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace sluice::io {

struct ReadRequest {
    int fd = -1;
    int fixed_buffer_index = -1;  // >= 0: dest lies in this registered buffer (READ_FIXED)
    uint64_t offset = 0;          // file offset
    uint32_t length = 0;          // bytes
    std::byte* dest = nullptr;
    uint64_t user_data = 0;       // handed back in the completion
};

struct ReadCompletion {
    uint64_t user_data = 0;
    int64_t result = 0;  // bytes read (may be short), or -errno
};

class CompletionSource {
public:
    virtual ~CompletionSource() = default;
    virtual const char* name() const = 0;
    // Most requests that may be outstanding at once.
    virtual size_t capacity() const = 0;
    // Queues a read; it is started no later than the next flush().
    virtual void enqueue(const ReadRequest& request) = 0;
    virtual void flush() = 0;
    // Moves finished reads into `out`; with `block`, waits for at least one (there must be one
    // outstanding). Returns how many were written.
    virtual size_t reap(std::span<ReadCompletion> out, bool block) = 0;
    // Registers buffers for fixed reads; returns false (and reads stay plain) if refused.
    virtual bool register_buffers(std::span<const std::span<std::byte>> buffers) {
        (void)buffers;
        return false;
    }
};

}  // namespace sluice::io
