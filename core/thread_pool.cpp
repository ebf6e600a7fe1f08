#include "core/thread_pool.hpp"

#include <algorithm>
#include <exception>
#include <memory>

namespace sluice {

namespace {
int g_default_threads = 0;
}

ThreadPool::ThreadPool(int n_threads) {
    if (n_threads <= 0) n_threads = int(std::max(1u, std::thread::hardware_concurrency()));
    n_threads_ = n_threads;
    workers_.reserve(size_t(n_threads - 1));
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
        ++generation_;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        FunctionRef<void(int)>* job;
        {
            std::unique_lock lock(mutex_);
            wake_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            if (stopping_) return;
            job = job_;
        }
        (*job)(index);
        {
            std::lock_guard lock(mutex_);
            if (--pending_ == 0) done_.notify_one();
        }
    }
}

void ThreadPool::run_on_all(FunctionRef<void(int)> fn) {
    if (n_threads_ == 1) {
        fn(0);
        return;
    }
    // Exceptions from workers are captured and rethrown on the caller's thread.
    std::exception_ptr error;
    std::mutex error_mutex;
    auto guarded = [&](int index) {
        try {
            fn(index);
        } catch (...) {
            std::lock_guard lock(error_mutex);
            if (!error) error = std::current_exception();
        }
    };
    FunctionRef<void(int)> job(guarded);
    {
        std::lock_guard lock(mutex_);
        job_ = &job;
        pending_ = n_threads_ - 1;
        ++generation_;
    }
    wake_.notify_all();
    guarded(0);
    {
        std::unique_lock lock(mutex_);
        done_.wait(lock, [&] { return pending_ == 0; });
        job_ = nullptr;
    }
    if (error) std::rethrow_exception(error);
}

void ThreadPool::parallel_for(int64_t n, FunctionRef<void(int64_t, int64_t, int)> fn, int64_t grain) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    const int64_t n_grains = (n + grain - 1) / grain;
    const int n_parts = int(std::min<int64_t>(n_threads_, n_grains));
    if (n_parts <= 1) {
        fn(0, n, 0);
        return;
    }
    run_on_all([&](int index) {
        if (index >= n_parts) return;
        const int64_t begin = std::min(n, (n_grains * index / n_parts) * grain);
        const int64_t end = std::min(n, (n_grains * (index + 1) / n_parts) * grain);
        if (begin < end) fn(begin, end, index);
    });
}

ThreadPool& ThreadPool::global() {
    static ThreadPool pool(g_default_threads);
    return pool;
}

void ThreadPool::set_default_threads(int n_threads) { g_default_threads = n_threads; }

}  // namespace sluice
