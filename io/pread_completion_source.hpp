// A pread thread pool behind the completion seam: the portable backend (io_uring refused,
// or for comparison). Each worker takes a request, preads once (a short read is reported as
// such; the reader resubmits), and posts the completion.
#pragma once

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "io/completion_source.hpp"

namespace sluice::io {

class PreadCompletionSource final : public CompletionSource {
public:
    // Throws ErrorKind::out_of_memory (having joined the workers that started) when the OS
    // refuses a thread.
    PreadCompletionSource(int n_threads, size_t queue_depth);
    ~PreadCompletionSource() override;

    const char* name() const override { return "pread"; }
    size_t capacity() const override { return queue_depth_; }
    void enqueue(const ReadRequest& request) override;
    void flush() override;
    size_t reap(std::span<ReadCompletion> out, bool block) override;

private:
    void worker();
    void stop();  // tells every worker to return
    size_t queue_depth_;
    std::mutex mutex_;
    std::condition_variable work_ready_;
    std::condition_variable completion_ready_;
    // Fixed rings sized to the queue depth (the reader never has more outstanding), so the hot
    // path does not allocate. work_/finished_ are guarded by mutex_; staged_ is the caller's.
    template <typename T> struct FixedRing {
        std::vector<T> items;
        size_t head = 0, count = 0;
        bool push(const T& v) {
            if (count == items.size()) return false;
            items[(head + count++) % items.size()] = v;
            return true;
        }
        T pop() {
            T v = items[head];
            head = (head + 1) % items.size();
            --count;
            return v;
        }
    };
    std::vector<ReadRequest> staged_;
    FixedRing<ReadRequest> work_;
    FixedRing<ReadCompletion> finished_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace sluice::io
