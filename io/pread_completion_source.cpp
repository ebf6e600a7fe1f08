#include "io/pread_completion_source.hpp"

#include <cerrno>
#include <unistd.h>

namespace sluice::io {

PreadCompletionSource::PreadCompletionSource(int n_threads, size_t queue_depth) : queue_depth_(queue_depth) {
    staged_.reserve(queue_depth);
    for (int i = 0; i < n_threads; ++i) threads_.emplace_back([this] { worker(); });
}

PreadCompletionSource::~PreadCompletionSource() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    work_ready_.notify_all();
    for (auto& t : threads_) t.join();
}

void PreadCompletionSource::enqueue(const ReadRequest& request) { staged_.push_back(request); }

void PreadCompletionSource::flush() {
    if (staged_.empty()) return;
    {
        std::lock_guard lock(mutex_);
        for (const auto& r : staged_) work_.push_back(r);
    }
    staged_.clear();
    work_ready_.notify_all();
}

size_t PreadCompletionSource::reap(std::span<ReadCompletion> out, bool block) {
    std::unique_lock lock(mutex_);
    if (block) completion_ready_.wait(lock, [&] { return !finished_.empty(); });
    size_t n = 0;
    while (n < out.size() && !finished_.empty()) {
        out[n++] = finished_.front();
        finished_.pop_front();
    }
    return n;
}

void PreadCompletionSource::worker() {
    for (;;) {
        ReadRequest request;
        {
            std::unique_lock lock(mutex_);
            work_ready_.wait(lock, [&] { return stopping_ || !work_.empty(); });
            if (stopping_) return;
            request = work_.front();
            work_.pop_front();
        }
        const ssize_t n = ::pread(request.fd, request.dest, request.length, off_t(request.offset));
        const int64_t result = n >= 0 ? int64_t(n) : -int64_t(errno);
        {
            std::lock_guard lock(mutex_);
            finished_.push_back(ReadCompletion{request.user_data, result});
        }
        completion_ready_.notify_one();
    }
}

}  // namespace sluice::io
