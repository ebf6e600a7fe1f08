// The compute threads: started once, reused by every kernel call. parallel_for splits a range
// into contiguous chunks, one per thread (the caller's thread works too), and waits for all.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "core/function_ref.hpp"

namespace sluice {

class ThreadPool {
public:
    // n_threads = 0 picks the number of online CPUs. Throws ErrorKind::out_of_memory (having
    // joined the workers that started) when the OS refuses a thread.
    explicit ThreadPool(int n_threads = 0);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(begin, end, thread_index) over [0, n) split into size() chunks whose boundaries
    // are multiples of `grain`. Runs inline when n is small or the pool has one thread.
    void parallel_for(int64_t n, FunctionRef<void(int64_t, int64_t, int)> fn, int64_t grain = 1);

    // Calls fn(thread_index) once on every thread.
    void run_on_all(FunctionRef<void(int)> fn);

    // A pool shared by the process (sized by set_default_threads before first use).
    static ThreadPool& global();
    static void set_default_threads(int n_threads);

private:
    void worker_loop(int index);
    void stop();  // tells every worker to return

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable done_;
    // Workers spin briefly on generation_ before sleeping on wake_; the caller spins on pending_
    // before sleeping on done_ (see worker_loop for why no wake-up is lost).
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<int> sleeping_workers_{0};
    std::atomic<bool> caller_sleeping_{false};
    bool stopping_ = false;
    FunctionRef<void(int)>* job_ = nullptr;
};

}  // namespace sluice
