// Starting a set of threads as one step: either all of them start, or the ones that did are told
// to stop and joined, and a typed error says how many were asked for. The OS refuses a thread at
// its limits (RLIMIT_AS or memory for the stack, RLIMIT_NPROC, a pids cgroup); a constructor that
// threw after starting some would leave them running on a destroyed object, and destroying their
// joinable std::thread members calls std::terminate (exit 134, no message).
#pragma once

#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.hpp"

namespace sluice {

// Starts `n` threads running body(i), i = 0..n-1, appended to `threads`. If one cannot start:
// calls stop_started() (which must make every started body return), joins them, empties
// `threads` and throws ErrorKind::out_of_memory: "could not start {n} {what}: {reason} ({k}
// started){hint}".
template <typename Body, typename StopStarted>
void start_threads(std::vector<std::thread>& threads, int n, std::string_view what, std::string_view hint, Body body,
                   StopStarted stop_started) {
    threads.reserve(threads.size() + size_t(n > 0 ? n : 0));  // emplace_back below cannot reallocate, so cannot throw after starting
    for (int i = 0; i < n; ++i) {
        try {
            threads.emplace_back(body, i);
        } catch (const std::system_error& e) {
            stop_started();
            for (auto& t : threads) t.join();
            threads.clear();
            fail(ErrorKind::out_of_memory, "could not start {} {}: {} ({} started){}", n, what, e.code().message(), i, hint);
        }
    }
}

}  // namespace sluice
