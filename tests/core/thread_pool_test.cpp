#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

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
