#include "core/thread_pool.hpp"
#include "core/thread_start.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace sluice {

namespace {

int g_default_threads = 0;

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

// Spins until `ready()` or kSpin has passed; true if ready. A decode step is hundreds of
// parallel_for calls a few microseconds apart; waking a worker parked on a condition variable
// costs tens of microseconds each time, as much as a cache-resident GEMV itself.
template <typename Ready>
bool spin_until(Ready&& ready) {
    constexpr auto kSpin = std::chrono::microseconds(50);
    const auto start = std::chrono::steady_clock::now();
    for (int i = 1;; ++i) {
        if (ready()) return true;
        cpu_relax();
        if ((i & 63) == 0 && std::chrono::steady_clock::now() - start > kSpin) return false;
    }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
    if (n_threads <= 0) n_threads = int(std::max(1u, std::thread::hardware_concurrency()));
    n_threads_ = n_threads;
    // Worker i + 1 (the caller is thread 0).
    start_threads(workers_, n_threads - 1, "compute threads", "; ask for fewer with --threads",
                  [this](int i) { worker_loop(i + 1); }, [this] { stop(); });
}

ThreadPool::~ThreadPool() {
    stop();
    for (auto& t : workers_) t.join();
}

void ThreadPool::stop() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
        generation_.fetch_add(1);
    }
    wake_.notify_all();
}

// Handshakes (new job -> workers, last worker done -> caller) are an atomic store followed by a
// check of the other side's "sleeping" count, and a sleeper raises that count under the mutex
// before re-checking the atomic: with sequentially consistent operations one of the two always
// sees the other, so no wake-up is lost, and the mutex is only taken when someone sleeps.
void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
            std::unique_lock lock(mutex_);
            sleeping_workers_.fetch_add(1);
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            sleeping_workers_.fetch_sub(1);
        }
        seen = generation_.load(std::memory_order_acquire);
        if (stopping_) return;
        (*job_)(index);
        if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
            std::lock_guard lock(mutex_);
            done_.notify_one();
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
    job_ = &job;
    pending_.store(n_threads_ - 1);
    generation_.fetch_add(1);  // publishes job_ and pending_
    if (sleeping_workers_.load() > 0) {
        std::lock_guard lock(mutex_);
        wake_.notify_all();
    }
    guarded(0);
    if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
        std::unique_lock lock(mutex_);
        caller_sleeping_.store(true);
        done_.wait(lock, [&] { return pending_.load() == 0; });
        caller_sleeping_.store(false);
    }
    job_ = nullptr;
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
