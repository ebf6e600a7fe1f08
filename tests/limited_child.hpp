// Runs a piece of a test in a forked child whose address space is capped a little above what it
// already maps: a real resource failure (thread stacks and large allocations are refused by the
// kernel) for the failure paths of code that starts threads or allocates, without touching the
// test process itself. A child that calls std::terminate is reported as 128 + SIGABRT = 134.
#pragma once

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>

#include "core/process_memory.hpp"

namespace sluice::testing {

// Sanitizers reserve terabytes of shadow address space: an address-space cap cannot work there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool address_space_caps_work = false;
#else
constexpr bool address_space_caps_work = true;
#endif

// fn() runs in the child with RLIMIT_AS = what the child maps now + extra_bytes; its return value
// is the child's exit code. Returns that code, or 128 + the signal that killed the child.
template <typename Fn>
int run_with_address_space_cap(uint64_t extra_bytes, Fn fn) {
    const pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        // The test framework's crash handlers are not for the child: a crash is its exit status.
        for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, SIG_DFL);
        const uint64_t mapped = process_memory_bytes("VmSize");
        const rlimit cap{mapped + extra_bytes, mapped + extra_bytes};
        if (setrlimit(RLIMIT_AS, &cap) != 0) _exit(125);
        int code = 124;
        try {
            code = fn();
        } catch (...) {
            code = 123;  // an exception the child did not expect
        }
        _exit(code);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace sluice::testing
