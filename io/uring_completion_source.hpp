// io_uring behind the completion seam: one ring, all model files opened by the reader, fixed
// buffers when the staging ring registers them (READ_FIXED), plain READ otherwise.
// Every enqueued read yields exactly one completion, whatever happens to its submission: the
// kernel may take fewer entries than were queued (flush submits the rest), and when it refuses a
// submit outright the reads it never took complete with that error, so the reader's count of
// reads outstanding stays true (its destructor waits for exactly those).
#pragma once

#include <liburing.h>

#include <memory>
#include <vector>

#include "io/completion_source.hpp"

namespace sluice::io {

class UringCompletionSource final : public CompletionSource {
public:
    // Returns nullptr (with errno_out set) when the kernel refuses io_uring (EPERM, ENOSYS...).
    static std::unique_ptr<UringCompletionSource> create(unsigned queue_depth, int* errno_out);
    ~UringCompletionSource() override;

    const char* name() const override { return "io_uring"; }
    size_t capacity() const override { return queue_depth_; }
    void enqueue(const ReadRequest& request) override;
    void flush() override;
    size_t reap(std::span<ReadCompletion> out, bool block) override;
    bool register_buffers(std::span<const std::span<std::byte>> buffers) override;

private:
    explicit UringCompletionSource(unsigned queue_depth);
    void fail_unsubmitted(int error, size_t n_left);
    io_uring ring_{};
    unsigned queue_depth_;
    bool buffers_registered_ = false;
    // user_data of the entries enqueued since the last flush, in order (the kernel takes them in
    // order); both vectors hold at most queue_depth_ entries, reserved at start.
    std::vector<uint64_t> unsubmitted_;
    std::vector<ReadCompletion> refused_;  // completions of reads the kernel never took
    size_t refused_head_ = 0;
    int broken_error_ = 0;                 // errno of a refused submit: the ring takes nothing more
};

}  // namespace sluice::io
