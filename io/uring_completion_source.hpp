// io_uring behind the completion seam: one ring, all model files opened by the reader, fixed
// buffers when the staging ring registers them (READ_FIXED), plain READ otherwise.
#pragma once

#include <liburing.h>

#include <memory>

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
    explicit UringCompletionSource(unsigned queue_depth) : queue_depth_(queue_depth) {}
    io_uring ring_{};
    unsigned queue_depth_;
    bool buffers_registered_ = false;
};

}  // namespace sluice::io
