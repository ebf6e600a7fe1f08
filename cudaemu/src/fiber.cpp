// cudaemu: fibers on Boost.Context's fcontext, with the ASan and TSan fiber annotations.
#include "fiber.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/detail/fcontext.hpp>
#include <cstdio>
#include <cstdlib>

// Present only when the program links a sanitizer runtime.
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size) __attribute__((weak));
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old)
    __attribute__((weak));
void __asan_unpoison_memory_region(const volatile void* addr, size_t size) __attribute__((weak));
void* __tsan_get_current_fiber() __attribute__((weak));
void* __tsan_create_fiber(unsigned flags) __attribute__((weak));
void __tsan_destroy_fiber(void* fiber) __attribute__((weak));
void __tsan_switch_to_fiber(void* fiber, unsigned flags) __attribute__((weak));
}

namespace cudaemu::detail {

namespace ctx = boost::context::detail;

namespace {

void start_switch(void** save, const void* bottom, size_t size) {
    if (__sanitizer_start_switch_fiber) __sanitizer_start_switch_fiber(save, bottom, size);
}
void finish_switch(void* save, const void** bottom_old, size_t* size_old) {
    if (__sanitizer_finish_switch_fiber) __sanitizer_finish_switch_fiber(save, bottom_old, size_old);
}
void tsan_switch(void* fiber) {
    if (__tsan_switch_to_fiber && fiber) __tsan_switch_to_fiber(fiber, 0);  // 0: the switch synchronises
}

// The transfer's data is the fiber on the first entry.
void fcontext_entry(ctx::transfer_t t) {
    auto* f = static_cast<Fiber*>(t.data);
    Fiber::entry_trampoline(t.fctx, f);
}

}  // namespace

Scheduler::Scheduler() {
    if (__tsan_get_current_fiber) tsan_fiber = __tsan_get_current_fiber();
}
Scheduler::~Scheduler() = default;

Fiber::Fiber(Scheduler& owner, Body body, size_t stack_bytes) : owner_(owner), body_(body) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    stack_bytes_ = (stack_bytes + page - 1) / page * page;
    mapped_bytes_ = stack_bytes_ + page;  // + a guard page below the stack
    stack_ = mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                  -1, 0);
    if (stack_ == MAP_FAILED) {
        std::perror("cudaemu: mmap of a fiber stack");
        std::abort();
    }
    mprotect(stack_, page, PROT_NONE);
    reset();
}

Fiber::~Fiber() {
    if (tsan_fiber_ && __tsan_destroy_fiber) __tsan_destroy_fiber(tsan_fiber_);
    unpoison_stack();
    munmap(stack_, mapped_bytes_);
}

void Fiber::reset() {
    char* top = static_cast<char*>(stack_) + mapped_bytes_;
    context_ = ctx::make_fcontext(top, stack_bytes_, fcontext_entry);
    fake_stack_ = nullptr;
    // Frames abandoned mid-kernel leave ASan's redzone marks on the stack: clear them for reuse.
    unpoison_stack();
    // A fiber abandoned mid-kernel leaves TSan's record of its call stack: start a fresh one.
    if (tsan_fiber_ && __tsan_destroy_fiber) __tsan_destroy_fiber(tsan_fiber_);
    tsan_fiber_ = __tsan_create_fiber ? __tsan_create_fiber(0) : nullptr;
}

void Fiber::unpoison_stack() {
    if (__asan_unpoison_memory_region)
        __asan_unpoison_memory_region(static_cast<char*>(stack_) + (mapped_bytes_ - stack_bytes_), stack_bytes_);
}

void Fiber::resume() {
    const char* bottom = static_cast<const char*>(stack_) + (mapped_bytes_ - stack_bytes_);
    start_switch(&owner_.fake_stack, bottom, stack_bytes_);
    tsan_switch(tsan_fiber_);
    ctx::transfer_t t = ctx::jump_fcontext(context_, this);
    finish_switch(owner_.fake_stack, nullptr, nullptr);
    context_ = t.fctx;
}

void Fiber::yield() {
    start_switch(&fake_stack_, owner_.stack_bottom, owner_.stack_size);
    tsan_switch(owner_.tsan_fiber);
    ctx::transfer_t t = ctx::jump_fcontext(owner_.context, nullptr);
    finish_switch(fake_stack_, &owner_.stack_bottom, &owner_.stack_size);
    owner_.context = t.fctx;
}

void Fiber::entry_trampoline(void* from, Fiber* f) {
    f->owner_.context = from;
    finish_switch(nullptr, &f->owner_.stack_bottom, &f->owner_.stack_size);
    f->body_(*f);  // never returns: the body loops, yielding between kernel threads
    std::fprintf(stderr, "cudaemu: a fiber body returned\n");
    std::abort();
}

}  // namespace cudaemu::detail
