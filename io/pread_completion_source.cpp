#include "io/pread_completion_source.hpp"

#include "core/error.hpp"
#include "core/thread_start.hpp"

#include <cerrno>
#include <unistd.h>

namespace sluice::io {

PreadCompletionSource::PreadCompletionSource(int n_threads, size_t queue_depth) : queue_depth_(queue_depth) {
    staged_.reserve(queue_depth);
    work_.items.resize(queue_depth);
    finished_.items.resize(queue_depth);
    start_threads(threads_, n_threads, "I/O threads (pread backend)", "; lower --qd",
                  [this](int) { worker(); }, [this] { stop(); });
}

PreadCompletionSource::~PreadCompletionSource() {
    stop();
    for (auto& t : threads_) t.join();
}

void PreadCompletionSource::stop() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    work_ready_.notify_all();
}

void PreadCompletionSource::enqueue(const ReadRequest& request) { staged_.push_back(request); }

void PreadCompletionSource::flush() {
    if (staged_.empty()) return;
    {
        std::lock_guard lock(mutex_);
        for (const auto& r : staged_)
            if (!work_.push(r))
                fail(ErrorKind::internal, "pread pool: more than {} reads outstanding", queue_depth_);
    }
    staged_.clear();
    work_ready_.notify_all();
}

size_t PreadCompletionSource::reap(std::span<ReadCompletion> out, bool block) {
    std::unique_lock lock(mutex_);
    if (block) completion_ready_.wait(lock, [&] { return finished_.count > 0; });
    size_t n = 0;
    while (n < out.size() && finished_.count > 0) out[n++] = finished_.pop();
    return n;
}

void PreadCompletionSource::worker() {
    for (;;) {
        ReadRequest request;
        {
            std::unique_lock lock(mutex_);
            work_ready_.wait(lock, [&] { return stopping_ || work_.count > 0; });
            if (stopping_) return;
            request = work_.pop();
        }
        const ssize_t n = ::pread(request.fd, request.dest, request.length, off_t(request.offset));
        const int64_t result = n >= 0 ? int64_t(n) : -int64_t(errno);
        {
            std::lock_guard lock(mutex_);
            // Cannot overflow: a request leaves work_ before its completion enters finished_.
            finished_.push(ReadCompletion{request.user_data, result});
        }
        completion_ready_.notify_one();
    }
}

}  // namespace sluice::io
