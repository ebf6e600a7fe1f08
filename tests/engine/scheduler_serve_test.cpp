// What sluice serve asks of the batch scheduler, on the transformers-made tiny DeepSeek-V3
// (tests/data/hf_tiny_v3): requests added between steps while others run, and requests cancelled
// while waiting or running, leave every other request's tokens what that request gets alone; a
// cancelled request is reported once, with the tokens it had, and its slot serves the next one.
#include <doctest/doctest.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.hpp"
#include "engine/batch_scheduler.hpp"
#include "engine/model_loader.hpp"

using namespace sluice;

namespace {

LoadedModel& tiny() {
    static const auto model = [] {
        const char* data = std::getenv("SLUICE_TEST_DATA");
        REQUIRE_MESSAGE(data, "SLUICE_TEST_DATA is not set");
        return load_model(std::string(data) + "/hf_tiny_v3");
    }();
    return *model;
}

ScheduledRequest request(int64_t id, std::mt19937& rng, int64_t prompt, int64_t tokens, float temperature) {
    ScheduledRequest r;
    r.id = id;
    std::uniform_int_distribution<int32_t> token(2, int32_t(tiny().layout().vocab) - 1);
    for (int64_t i = 0; i < prompt; ++i) r.prompt.push_back(token(rng));
    r.max_new_tokens = tokens;
    r.sampler = {temperature, 0, 1.0f, uint64_t(100 + id), 0};
    r.stop_at_eos = false;
    return r;
}

struct Finished {
    std::vector<int32_t> tokens;
    FinishReason reason = FinishReason::length;
    int n_reports = 0;
};

// Runs a scheduler of `max_sequences` slots; before step k, `between(k, scheduler)` may add or
// cancel requests. Returns what on_finish reported, by id, and the tokens on_token saw.
struct Run {
    std::map<int64_t, Finished> finished;
    std::map<int64_t, std::vector<int32_t>> streamed;
};
Run run(int max_sequences, const std::function<void(int, BatchScheduler&)>& between, int max_steps = 400) {
    ThreadPool pool(2);
    const ForwardOptions fo{RunShape{max_sequences, 64, 48}};
    DeepseekForward forward(tiny().layout(), *tiny().provider, fo, pool);
    Run out;
    BatchScheduler scheduler(
        forward, {max_sequences, 8, 48},
        [&](int64_t id, int32_t token) {
            out.streamed[id].push_back(token);
            return false;
        },
        [&](int64_t id, std::span<const int32_t> tokens, FinishReason reason) {
            Finished& f = out.finished[id];
            f.tokens.assign(tokens.begin(), tokens.end());
            f.reason = reason;
            ++f.n_reports;
        });
    for (int k = 0; k < max_steps; ++k) {
        between(k, scheduler);
        if (scheduler.idle() && k > 40) break;
        scheduler.step(16);
    }
    REQUIRE(scheduler.idle());
    return out;
}

std::vector<int32_t> alone(const ScheduledRequest& r) {
    Run one = run(1, [&](int k, BatchScheduler& s) {
        if (k == 0) s.add(r);
    });
    return one.finished.at(r.id).tokens;
}

}  // namespace

TEST_CASE("requests added between steps while others run get the tokens they get alone") {
    std::mt19937 rng(3);
    std::vector<ScheduledRequest> requests;
    for (int i = 0; i < 6; ++i) requests.push_back(request(i, rng, 3 + 5 * i % 17, 4 + 3 * i % 11, i % 2 ? 0.8f : 0.0f));
    // Two at the start, then one every few steps (into a running batch of three slots).
    const Run r = run(3, [&](int k, BatchScheduler& s) {
        if (k == 0) s.add(requests[0]), s.add(requests[1]);
        const size_t next = size_t(k / 3 + 2);
        if (k % 3 == 2 && next < requests.size()) s.add(requests[next]);
    });
    REQUIRE(r.finished.size() == requests.size());
    for (const auto& q : requests) {
        CAPTURE(q.id);
        CHECK(r.finished.at(q.id).reason == FinishReason::length);
        CHECK(r.finished.at(q.id).tokens == alone(q));
        CHECK(r.streamed.at(q.id) == r.finished.at(q.id).tokens);
    }
}

TEST_CASE("a cancelled request is reported once with its tokens so far, and its slot serves the next request") {
    std::mt19937 rng(8);
    const ScheduledRequest a = request(10, rng, 5, 30, 0.0f);  // cancelled while running
    const ScheduledRequest b = request(11, rng, 7, 12, 0.0f);
    const ScheduledRequest c = request(12, rng, 4, 10, 0.7f);  // waits, then takes a's slot
    const ScheduledRequest d = request(13, rng, 6, 10, 0.0f);  // cancelled while waiting
    bool unknown = true, again = true;
    const Run r = run(2, [&](int k, BatchScheduler& s) {
        if (k == 0) s.add(a), s.add(b), s.add(c), s.add(d);
        if (k == 4) {
            CHECK(s.n_active() == 2);
            CHECK(s.n_pending() == 2);
            CHECK(s.cancel(a.id));
            CHECK(s.cancel(d.id));
            CHECK(s.n_active() == 1);
            CHECK(s.n_pending() == 1);
            unknown = s.cancel(99);
            again = s.cancel(a.id);
        }
    });
    CHECK_FALSE(unknown);
    CHECK_FALSE(again);
    const Finished& fa = r.finished.at(a.id);
    CHECK(fa.reason == FinishReason::cancelled);
    CHECK(fa.n_reports == 1);
    CHECK(fa.tokens == r.streamed.at(a.id));
    CHECK(fa.tokens.size() >= 1);
    CHECK(fa.tokens.size() < size_t(a.max_new_tokens));
    const std::vector<int32_t> a_alone = alone(a);
    CHECK(std::equal(fa.tokens.begin(), fa.tokens.end(), a_alone.begin()));  // a prefix of its full run
    const Finished& fd = r.finished.at(d.id);
    CHECK(fd.reason == FinishReason::cancelled);
    CHECK(fd.n_reports == 1);
    CHECK(fd.tokens.empty());
    CHECK_FALSE(r.streamed.count(d.id));  // never ran
    // b ran beside a, c in the slot a left (its cache truncated): each as alone.
    CHECK(r.finished.at(b.id).tokens == alone(b));
    CHECK(r.finished.at(c.id).reason == FinishReason::length);
    CHECK(r.finished.at(c.id).tokens == alone(c));
}
