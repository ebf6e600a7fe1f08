#include "io/uring_completion_source.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/uio.h>
#include <vector>

#include "core/error.hpp"

namespace sluice::io {

namespace {
// A submit that took nothing, or was interrupted, is retried this many times before it counts as
// refused (the kernel takes fewer entries when it is short of memory for requests).
constexpr int kSubmitRetries = 1000;
}  // namespace

UringCompletionSource::UringCompletionSource(unsigned queue_depth) : queue_depth_(queue_depth) {
    unsubmitted_.reserve(queue_depth);
    refused_.reserve(queue_depth);
}

std::unique_ptr<UringCompletionSource> UringCompletionSource::create(unsigned queue_depth, int* errno_out) {
    std::unique_ptr<UringCompletionSource> source(new UringCompletionSource(queue_depth));
    // The CQ is twice the SQ by default; queue_depth bounds what the reader keeps outstanding.
    const int rc = io_uring_queue_init(queue_depth, &source->ring_, 0);
    if (rc < 0) {
        if (errno_out) *errno_out = -rc;
        source->queue_depth_ = 0;  // ring not initialised: the destructor must not exit it
        return nullptr;
    }
    return source;
}

UringCompletionSource::~UringCompletionSource() {
    if (queue_depth_ == 0) return;
    if (buffers_registered_) io_uring_unregister_buffers(&ring_);
    io_uring_queue_exit(&ring_);
}

void UringCompletionSource::enqueue(const ReadRequest& request) {
    if (broken_error_) {
        refused_.push_back(ReadCompletion{request.user_data, -broken_error_});
        return;
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {  // SQ full: push what is queued and take a fresh entry
        flush();
        if (broken_error_) {
            refused_.push_back(ReadCompletion{request.user_data, -broken_error_});
            return;
        }
        sqe = io_uring_get_sqe(&ring_);
        if (!sqe) fail(ErrorKind::internal, "io_uring: no submission entry free (queue depth {})", queue_depth_);
    }
    if (request.fixed_buffer_index >= 0 && buffers_registered_)
        io_uring_prep_read_fixed(sqe, request.fd, request.dest, request.length, request.offset,
                                 request.fixed_buffer_index);
    else
        io_uring_prep_read(sqe, request.fd, request.dest, request.length, request.offset);
    io_uring_sqe_set_data64(sqe, request.user_data);
    if (unsubmitted_.size() == unsubmitted_.capacity())
        fail(ErrorKind::internal, "io_uring: more than {} reads queued unsubmitted", queue_depth_);
    unsubmitted_.push_back(request.user_data);
}

void UringCompletionSource::flush() {
    int retries = 0;
    // Entries prepared and not yet taken by the kernel (it takes them in order).
    while (const unsigned queued = io_uring_sq_ready(&ring_)) {
        const int rc = io_uring_submit(&ring_);
        if (rc > 0) {
            retries = 0;  // a count short of `queued` is not success: the rest are still in the ring
            continue;
        }
        if ((rc == 0 || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) && ++retries <= kSubmitRetries) continue;
        fail_unsubmitted(rc < 0 ? -rc : EAGAIN, queued);
        break;
    }
    unsubmitted_.clear();
}

// The kernel refused the last `n_left` entries queued: they complete with its error, and the ring
// takes nothing more (submitting them later would read into buffers whose reads were already
// reported failed, and may have been reused since).
void UringCompletionSource::fail_unsubmitted(int error, size_t n_left) {
    broken_error_ = error;
    for (size_t i = unsubmitted_.size() - std::min(n_left, unsubmitted_.size()); i < unsubmitted_.size(); ++i)
        refused_.push_back(ReadCompletion{unsubmitted_[i], -error});
}

size_t UringCompletionSource::reap(std::span<ReadCompletion> out, bool block) {
    size_t n = 0;
    // Reads the kernel never took first: they need no wait.
    while (n < out.size() && refused_head_ < refused_.size()) out[n++] = refused_[refused_head_++];
    if (refused_head_ == refused_.size()) {
        refused_.clear();
        refused_head_ = 0;
    }
    while (n < out.size()) {
        io_uring_cqe* cqe = nullptr;
        int rc;
        if (n == 0 && block)
            rc = io_uring_wait_cqe(&ring_, &cqe);
        else
            rc = io_uring_peek_cqe(&ring_, &cqe);
        if (rc == -EINTR && n == 0 && block) continue;
        if (rc < 0 && rc != -EAGAIN && n == 0 && block)
            fail(ErrorKind::io, "io_uring_wait_cqe: {}", std::strerror(-rc));  // a wait that can never end
        if (rc < 0 || !cqe) break;
        out[n++] = ReadCompletion{io_uring_cqe_get_data64(cqe), cqe->res};
        io_uring_cqe_seen(&ring_, cqe);
    }
    return n;
}

bool UringCompletionSource::register_buffers(std::span<const std::span<std::byte>> buffers) {
    if (buffers_registered_) {
        io_uring_unregister_buffers(&ring_);
        buffers_registered_ = false;
    }
    std::vector<iovec> iovecs;
    for (auto b : buffers) iovecs.push_back(iovec{b.data(), b.size()});
    const int rc = io_uring_register_buffers(&ring_, iovecs.data(), unsigned(iovecs.size()));
    buffers_registered_ = rc == 0;
    return buffers_registered_;
}

}  // namespace sluice::io
