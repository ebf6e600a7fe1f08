// The staging ring under a randomized producer/consumer: every slot handed out is filled and
// consumed exactly once, in order, never held by two parties at once.
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "io/staging_ring.hpp"

using namespace sluice;
using namespace sluice::io;

TEST_CASE("staging slots are 2 MiB aligned, distinct and of the requested size") {
    StagingRing ring(3, 1 << 20);
    CHECK(reinterpret_cast<uintptr_t>(ring.regions()[0].data()) % (2 << 20) == 0);
    std::vector<StagingSlot*> slots;
    for (int i = 0; i < 3; ++i) slots.push_back(&ring.acquire());
    CHECK(ring.try_acquire() == nullptr);
    for (int i = 0; i < 3; ++i) {
        CHECK(slots[i]->index == uint32_t(i));
        CHECK(slots[i]->bytes.size() == (1 << 20));
        if (i > 0) CHECK(slots[i]->bytes.data() == slots[i - 1]->bytes.data() + (1 << 20));
    }
}

TEST_CASE("releasing a slot out of order or twice is an internal error") {
    StagingRing ring(2, 4096);
    auto& a = ring.acquire();
    auto& b = ring.acquire();
    CHECK_THROWS_AS(ring.release(b), Error);
    ring.release(a);
    ring.release(b);
    CHECK_THROWS_AS(ring.release(b), Error);
}

TEST_CASE("randomized producer/consumer: no slot handed out twice, none lost, order kept") {
    constexpr size_t n_slots = 5;
    constexpr uint64_t n_items = 20000;
    StagingRing ring(n_slots, 4096);
    std::vector<std::atomic<int>> holders(n_slots);
    for (auto& h : holders) h = 0;
    std::mutex m;
    std::condition_variable cv;
    std::deque<StagingSlot*> handed;
    std::atomic<bool> double_hold{false};

    std::thread producer([&] {
        std::mt19937 rng(1);
        for (uint64_t i = 0; i < n_items; ++i) {
            StagingSlot* s = (rng() % 2) ? ring.try_acquire() : &ring.acquire();
            if (!s) s = &ring.acquire();
            if (holders[s->index].fetch_add(1) != 0) double_hold = true;
            s->segment_id = i;
            std::memcpy(s->bytes.data(), &i, sizeof i);
            if (rng() % 16 == 0) std::this_thread::yield();
            {
                std::lock_guard lock(m);
                handed.push_back(s);
            }
            cv.notify_one();
        }
    });
    std::mt19937 rng(2);
    uint64_t expected = 0;
    bool order_ok = true, content_ok = true;
    while (expected < n_items) {
        StagingSlot* s;
        {
            std::unique_lock lock(m);
            cv.wait(lock, [&] { return !handed.empty(); });
            s = handed.front();
            handed.pop_front();
        }
        uint64_t v;
        std::memcpy(&v, s->bytes.data(), sizeof v);
        order_ok &= s->segment_id == expected;
        content_ok &= v == expected;
        if (rng() % 16 == 0) std::this_thread::yield();
        holders[s->index].fetch_sub(1);
        ring.release(*s);
        ++expected;
    }
    producer.join();
    CHECK_FALSE(double_hold.load());
    CHECK(order_ok);
    CHECK(content_ok);
    CHECK(ring.outstanding() == 0);
}
