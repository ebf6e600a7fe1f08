// cudaemu internals: a fiber is one kernel thread's stack and saved registers (Boost.Context's
// fcontext: a switch is a few instructions, no system call). Switches are announced to ASan and
// TSan when the program runs under them (the hooks are weak symbols, null otherwise), so both
// follow the stack changes instead of reporting the fibers' frames as errors.
#pragma once

#include <cstddef>

namespace cudaemu::detail {

class Scheduler;

class Fiber {
public:
    using Body = void (*)(Fiber&);
    Fiber(Scheduler& owner, Body body, size_t stack_bytes);
    ~Fiber();
    Fiber(const Fiber&) = delete;
    Fiber& operator=(const Fiber&) = delete;

    // From the scheduler: runs the fiber until it yields (or, after reset, from the start of body).
    void resume();
    // From inside the fiber: back to the scheduler.
    void yield();
    // Forgets where the fiber stopped; the next resume starts body afresh on the same stack.
    void reset();

    void* user = nullptr;  // the scheduler's per-fiber state

    // First code run on the fiber's stack (from the fcontext entry point).
    [[noreturn]] static void entry_trampoline(void* from, Fiber* f);

private:
    void unpoison_stack();
    void* stack_ = nullptr;
    size_t mapped_bytes_ = 0, stack_bytes_ = 0;
    void* context_ = nullptr;     // where the fiber resumes
    void* fake_stack_ = nullptr;  // ASan's fake stack of this fiber while it is switched out
    void* tsan_fiber_ = nullptr;
    Scheduler& owner_;
    Body body_;
};

// The OS thread's side: where fibers return to when they yield.
class Scheduler {
public:
    Scheduler();
    ~Scheduler();
    void* context = nullptr;  // saved at each switch into a fiber
    const void* stack_bottom = nullptr;
    size_t stack_size = 0;
    void* fake_stack = nullptr;
    void* tsan_fiber = nullptr;
};

}  // namespace cudaemu::detail
