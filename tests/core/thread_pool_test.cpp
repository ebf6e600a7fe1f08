#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <stdexcept>
#include <string>
#include <vector>

#include "../limited_child.hpp"
#include "core/error.hpp"
#include "core/thread_pool.hpp"

using namespace sluice;

TEST_CASE("parallel_for covers every index exactly once, in grain-aligned chunks") {
    for (int threads : {1, 2, 3, 7}) {
        ThreadPool pool(threads);
        for (int64_t n : {0, 1, 5, 64, 1000, 1001}) {
            std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
            pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
                CHECK(b % 4 == 0);
                for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
            }, 4);
            for (auto& h : hits) CHECK(h.load() == 1);
        }
    }
}

TEST_CASE("an exception thrown on a worker reaches the caller and the pool stays usable") {
    ThreadPool pool(3);
    CHECK_THROWS_AS(pool.run_on_all([](int i) { if (i == 2) throw std::runtime_error("boom"); }), std::runtime_error);
    std::atomic<int> count{0};
    pool.run_on_all([&](int) { count++; });
    CHECK(count.load() == 3);
}

TEST_CASE("jobs back to back and jobs after the workers went to sleep all run on every thread") {
    // Workers spin a short while after a job, then sleep: alternate calls that find them spinning
    // with calls made after a pause long enough for them to sleep, so both hand-offs run.
    for (int n_threads : {2, 3, 5}) {
        CAPTURE(n_threads);
        ThreadPool pool(n_threads);
        std::vector<int64_t> sums(static_cast<size_t>(n_threads), 0);
        int64_t expected = 0;
        for (int round = 0; round < 400; ++round) {
            const int64_t n = 1000 + round;
            pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
                for (int64_t i = b; i < e; ++i) sums[size_t(t)] += i;
            });
            expected += n * (n - 1) / 2;
            if (round % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        int64_t total = 0;
        for (auto s : sums) total += s;
        CHECK(total == expected);
        std::atomic<int> calls{0};
        pool.run_on_all([&](int) { ++calls; });
        CHECK(calls == n_threads);
    }
}

TEST_CASE("a pool whose threads the OS refuses throws a typed error after joining the ones that started") {
    if (!testing::address_space_caps_work) {
        MESSAGE("sanitizer build: an address-space cap cannot work here; skipped");
        return;
    }
    // 4096 threads need 32 GiB of stacks at 8 MiB each; the cap leaves room for a few dozen.
    const int code = testing::run_with_address_space_cap(256 << 20, [] {
        try {
            ThreadPool pool(4096);
            return 2;  // every thread started: the cap did not bite
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::out_of_memory) return 3;
            if (std::string(e.what()).find("could not start 4095 compute threads") == std::string::npos) return 4;
        }
        // Nothing is left running on the half-built pool, and a smaller pool still works.
        ThreadPool small(2);
        std::atomic<int> calls{0};
        small.run_on_all([&](int) { ++calls; });
        return calls == 2 ? 0 : 5;
    });
    CHECK(code == 0);  // 134: std::terminate on the joinable threads of the half-built pool
}
