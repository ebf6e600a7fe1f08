// A reader whose reads fail at completion (as an EIO does: accepted, then the outcome is an
// error), for the streamer tests on the host and on the device; and a guard against a hang.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/model_plan.hpp"
#include "tests/engine/forwarding_segment_io.hpp"

namespace sluice::test {

// The reader, except that reads number [first, first + count) fail AT COMPLETION (those submitted
// while `failing`, wherever they complete): submitted and accepted, then the poll or wait that
// hands the outcome back reports an I/O error instead (as io/'s reader does for an EIO), and the
// ticket is gone, as the reader forgets it. It keeps the tickets outstanding and counts a poll
// or wait of one it does not hold (what was "unknown read ticket" a step after a failed read).
class FailingAtCompletionSegmentIo : public ForwardingSegmentIo {
public:
    FailingAtCompletionSegmentIo(SegmentIo& inner, const ModelPlan* plan, int first, int count)
        : ForwardingSegmentIo(inner), plan_(plan), first_(first), count_(count) {}
    uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                    const std::byte** extent_data) override {
        const uint64_t ticket = inner_.submit(extents, buffer, buffer_bytes, extent_data);
        ++submits_;
        bool dense = false;
        if (plan_)
            for (const auto& l : plan_->layers)
                dense |= !l.dense.tensors.empty() && l.dense.tensors.front().extent.offset == extents.front().offset &&
                         l.dense.tensors.front().extent.file_index == extents.front().file_index;
        outstanding_.push_back({ticket, submits_, dense, failing && submits_ >= first_ && submits_ < first_ + count_});
        return ticket;
    }
    bool poll(uint64_t ticket) override {
        const size_t i = find(ticket);
        if (!inner_.poll(ticket)) return false;
        hand_back(i);
        return true;
    }
    void wait(uint64_t ticket) override {
        const size_t i = find(ticket);
        inner_.wait(ticket);
        hand_back(i);
    }
    size_t outstanding() const { return outstanding_.size(); }
    int submits() const { return submits_; }
    bool failing = true;  // false: reads submitted from now on do not fail (those before still may)
    int unknown_tickets = 0;
    int failed_dense = 0, failed_expert = 0;

private:
    struct Read {
        uint64_t ticket;
        int number;
        bool dense;
        bool fails;
    };
    size_t find(uint64_t ticket) {
        for (size_t i = 0; i < outstanding_.size(); ++i)
            if (outstanding_[i].ticket == ticket) return i;
        ++unknown_tickets;
        return outstanding_.size();  // the inner reader names the error
    }
    void hand_back(size_t i) {
        if (i == outstanding_.size()) return;
        const Read r = outstanding_[i];
        outstanding_.erase(outstanding_.begin() + ptrdiff_t(i));
        if (!r.fails) return;
        ++(r.dense ? failed_dense : failed_expert);
        fail(ErrorKind::io, "read number {} failed at completion", r.number);
    }
    const ModelPlan* plan_;  // null: every read counts as an expert's
    int first_, count_;
    int submits_ = 0;
    std::vector<Read> outstanding_;
};

// Runs `f` on a thread and ends the whole test binary if it has not returned within `seconds`
// (a streamer waiting on a read that will never be handed back hangs rather than fails).
template <typename F>
auto within_seconds(int seconds, F&& f) {
    std::packaged_task<decltype(f())()> task(std::forward<F>(f));
    auto result = task.get_future();
    std::thread thread(std::move(task));
    if (result.wait_for(std::chrono::seconds(seconds)) != std::future_status::ready) {
        fmt::print(stderr, "a run with a failed read did not end within {} s: hung\n", seconds);
        std::_Exit(1);
    }
    thread.join();
    return result.get();
}

}  // namespace sluice::test
