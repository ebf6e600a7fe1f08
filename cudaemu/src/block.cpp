// cudaemu: executes a grid block by block; inside a block every CUDA thread is a fiber. The
// scheduler runs each runnable thread until it stops at a barrier, a warp collective or its end,
// in a seeded random (or forward, or reverse) order, so code that reads what another thread
// writes before the barrier that orders them sees the wrong value under some order. Then it
// matches collectives: a warp operation completes when every non-exited lane its mask names has
// made the same call (else it is an error: wrong mask, lane at another operation, lane reading an
// exited lane); __syncthreads completes when every thread of the block arrived at the same one
// (an exited thread, a thread at another barrier, or one stuck in a warp operation is an error,
// where the hardware would hang or be undefined).
#include <algorithm>
#include <bit>
#include <numeric>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "device_state.hpp"
#include "fiber.hpp"

thread_local constinit uint3 threadIdx __attribute__((tls_model("initial-exec"))) = {0, 0, 0};
thread_local constinit uint3 blockIdx __attribute__((tls_model("initial-exec"))) = {0, 0, 0};
thread_local constinit dim3 blockDim __attribute__((tls_model("initial-exec"))) = dim3(1, 1, 1);
thread_local constinit dim3 gridDim __attribute__((tls_model("initial-exec"))) = dim3(1, 1, 1);

// The static __shared__ variables of the whole program (section cudaemu_shared); absent when
// no kernel declares one.
extern "C" char __start_cudaemu_shared[] __attribute__((weak));
extern "C" char __stop_cudaemu_shared[] __attribute__((weak));

namespace cudaemu::detail {

namespace {

constexpr size_t kStackBytes = 256 << 10;

enum class State : uint8_t { runnable, barrier, warp, exited, faulted };

struct KThread {
    uint3 tid{};
    unsigned linear = 0;
    State state = State::runnable;
    WarpOp warp_op = WarpOp::sync;
    BarrierOp barrier_op = BarrierOp::plain;
    unsigned mask = 0;
    uint64_t value = 0;
    int param = 0, width = 32;
    bool is_signed = false;
    std::source_location where;
    uint64_t result = 0;
};

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

std::string where_text(const std::source_location& w) {
    if (!w.file_name() || !*w.file_name()) return "?";
    std::string f = w.file_name();
    if (auto slash = f.rfind('/'); slash != std::string::npos) f = f.substr(slash + 1);
    return f + ":" + std::to_string(w.line()) + " (" + w.function_name() + ")";
}

bool same_site(const std::source_location& a, const std::source_location& b) {
    return a.line() == b.line() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::sync: return "__syncwarp";
        case WarpOp::shfl_idx: return "__shfl_sync";
        case WarpOp::shfl_up: return "__shfl_up_sync";
        case WarpOp::shfl_down: return "__shfl_down_sync";
        case WarpOp::shfl_xor: return "__shfl_xor_sync";
        case WarpOp::ballot: return "__ballot_sync";
        case WarpOp::vote_all: return "__all_sync";
        case WarpOp::vote_any: return "__any_sync";
        case WarpOp::reduce_add: return "__reduce_add_sync";
        case WarpOp::reduce_min: return "__reduce_min_sync";
        case WarpOp::reduce_max: return "__reduce_max_sync";
    }
    return "?";
}

std::string hex32(unsigned v) {
    char b[16];
    std::snprintf(b, sizeof b, "0x%08x", v);
    return b;
}

std::string xyz(uint3 v) {
    char b[48];
    std::snprintf(b, sizeof b, "(%u,%u,%u)", v.x, v.y, v.z);
    return b;
}

// Writes poison without the memset the sanitizers intercept: the static shared section holds
// ASan redzones between its variables.
__attribute__((no_sanitize("address", "thread"))) void poison_bytes(char* begin, char* end) {
    for (volatile char* p = begin; p < end; ++p) *p = char(0xff);
}

class BlockRunner;
thread_local BlockRunner* tls_runner = nullptr;

void fiber_body(Fiber& f);

class BlockRunner {
public:
    // Runs one block; false when it faulted (code and message set).
    bool run(KernelCall& call, dim3 grid, dim3 block, uint3 block_index, size_t dynamic_bytes, Schedule schedule,
             uint64_t launch_id, bool poison) {
        call_ = &call;
        const unsigned n = block.x * block.y * block.z;
        while (fibers_.size() < n) fibers_.push_back(std::make_unique<Fiber>(scheduler_, fiber_body, kStackBytes));
        threads_.assign(n, KThread{});
        for (unsigned i = 0; i < n; ++i) {
            threads_[i].linear = i;
            threads_[i].tid = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
            fibers_[i]->user = &threads_[i];
        }
        blockIdx = block_index;
        blockDim = block;
        gridDim = grid;
        if (poison && __start_cudaemu_shared && static_cast<char*>(__stop_cudaemu_shared) > static_cast<char*>(__start_cudaemu_shared))
            poison_bytes(__start_cudaemu_shared, __stop_cudaemu_shared);
        // Its own allocation of exactly the launch's size: ASan reports any access past it.
        dynamic_shared_ = std::malloc(dynamic_bytes);
        if (poison && dynamic_bytes) std::memset(dynamic_shared_, 0xff, dynamic_bytes);
        uint64_t rng = schedule.seed * 0x2545f4914f6cdd1dull + launch_id * 0x9e3779b97f4a7c15ull +
                       ((uint64_t(block_index.z) * gridDim.y + block_index.y) * gridDim.x + block_index.x);
        failed_ = false;
        bool ok = schedule_block(schedule.order, rng);
        if (!ok) {
            for (unsigned i = 0; i < n; ++i)
                if (threads_[i].state != State::exited) fibers_[i]->reset();
        }
        std::free(dynamic_shared_);
        dynamic_shared_ = nullptr;
        current_ = nullptr;
        return ok;
    }

    [[noreturn]] void fault(cudaError_t code, const std::string& what, const std::source_location& where) {
        KThread& t = *current_;
        fail(code, "thread " + xyz(t.tid) + ": " + what + " at " + where_text(where));
        t.state = State::faulted;
        fiber_of(t).yield();
        std::fprintf(stderr, "cudaemu: a faulted thread was resumed\n");
        std::abort();
    }

    int barrier(BarrierOp op, int pred, const std::source_location& where) {
        KThread& t = *current_;
        t.state = State::barrier;
        t.barrier_op = op;
        t.value = uint64_t(pred);
        t.where = where;
        fiber_of(t).yield();
        return int(t.result);
    }

    uint64_t collective(WarpOp op, unsigned mask, uint64_t value, int param, int width, bool is_signed,
                        const std::source_location& where) {
        KThread& t = *current_;
        const unsigned lane = t.linear % 32;
        if (!((mask >> lane) & 1u))
            fault(cudaErrorLaunchFailure, std::string(op_name(op)) + " with mask " + hex32(mask) +
                                              ", which does not include the calling lane " + std::to_string(lane), where);
        const bool shuffle = op == WarpOp::shfl_idx || op == WarpOp::shfl_up || op == WarpOp::shfl_down || op == WarpOp::shfl_xor;
        if (shuffle && (width < 1 || width > 32 || (width & (width - 1)) != 0))
            fault(cudaErrorLaunchFailure, std::string(op_name(op)) + " with width " + std::to_string(width) +
                                              " (a power of two up to 32)", where);
        t.state = State::warp;
        t.warp_op = op;
        t.mask = mask;
        t.value = value;
        t.param = param;
        t.width = width;
        t.is_signed = is_signed;
        t.where = where;
        fiber_of(t).yield();
        return t.result;
    }

    unsigned active_mask() const {
        const KThread& t = *current_;
        const unsigned base = t.linear / 32 * 32;
        unsigned m = 0;
        for (unsigned l = 0; l < 32 && base + l < threads_.size(); ++l)
            if (threads_[base + l].state != State::exited) m |= 1u << l;
        return m;
    }

    void* dynamic_shared() const { return dynamic_shared_; }
    KernelCall& call() { return *call_; }
    KThread* current() { return current_; }
    cudaError_t code() const { return code_; }
    const std::string& message() const { return message_; }

private:
    Fiber& fiber_of(const KThread& t) { return *fibers_[t.linear]; }

    void fail(cudaError_t code, std::string message) {
        if (failed_) return;
        failed_ = true;
        code_ = code;
        message_ = "block " + xyz(blockIdx) + " of grid " + xyz(uint3(gridDim)) + ", block size " +
                   xyz(uint3(blockDim)) + ": " + std::move(message);
    }

    bool schedule_block(Order order, uint64_t& rng) {
        std::vector<unsigned>& runnable = order_;
        for (;;) {
            runnable.clear();
            for (const auto& t : threads_)
                if (t.state == State::runnable) runnable.push_back(t.linear);
            if (order == Order::reverse) std::reverse(runnable.begin(), runnable.end());
            if (order == Order::random)
                for (size_t i = runnable.size(); i > 1; --i) std::swap(runnable[i - 1], runnable[splitmix(rng) % i]);
            for (unsigned i : runnable) {
                KThread& t = threads_[i];
                current_ = &t;
                threadIdx = t.tid;
                fibers_[i]->resume();
                if (failed_) return false;
            }
            bool all_exited = true;
            for (const auto& t : threads_) all_exited &= t.state == State::exited;
            if (all_exited) return true;
            if (resolve_warps()) continue;
            if (failed_) return false;
            if (release_barrier()) continue;
            return false;
        }
    }

    // Completes every warp collective whose partners have all arrived; true when any did.
    bool resolve_warps() {
        bool progressed = false;
        const unsigned n = unsigned(threads_.size());
        for (unsigned base = 0; base < n; base += 32) {
            const unsigned lanes = std::min(32u, n - base);
            for (unsigned l = 0; l < lanes; ++l) {
                KThread& t = threads_[base + l];
                if (t.state != State::warp) continue;
                unsigned part = 0;
                for (unsigned p = 0; p < lanes; ++p) {
                    if (!((t.mask >> p) & 1u)) continue;
                    const KThread& q = threads_[base + p];
                    if (q.state == State::exited) continue;
                    if (q.state == State::barrier) {
                        fail(cudaErrorLaunchFailure,
                             "thread " + xyz(t.tid) + " waits in " + op_name(t.warp_op) + "(mask " + hex32(t.mask) +
                                 ") at " + where_text(t.where) + " for lane " + std::to_string(p) + " (thread " +
                                 xyz(q.tid) + "), which waits at __syncthreads at " + where_text(q.where));
                        return false;
                    }
                    if (q.state != State::warp || q.mask != t.mask || q.warp_op != t.warp_op || q.width != t.width) {
                        fail(cudaErrorLaunchFailure,
                             "thread " + xyz(t.tid) + " calls " + op_name(t.warp_op) + "(mask " + hex32(t.mask) +
                                 ") at " + where_text(t.where) + " but lane " + std::to_string(p) + " (thread " +
                                 xyz(q.tid) + ") named in the mask calls " + op_name(q.warp_op) + "(mask " +
                                 hex32(q.mask) + ") at " + where_text(q.where));
                        return false;
                    }
                    part |= 1u << p;
                }
                if (!complete(base, part)) return false;
                progressed = true;
            }
        }
        return progressed;
    }

    // Computes the results of one collective over the lanes in `part` of the warp at `base`.
    bool complete(unsigned base, unsigned part) {
        const KThread& first = threads_[base + unsigned(std::countr_zero(part))];
        const WarpOp op = first.warp_op;
        uint64_t ballot = 0;
        int64_t sum = 0, lo = 0, hi = 0;
        bool seen = false;
        for (unsigned p = 0; p < 32; ++p) {
            if (!((part >> p) & 1u)) continue;
            const KThread& q = threads_[base + p];
            if (q.value) ballot |= 1ull << p;
            const int64_t v = q.is_signed ? int64_t(q.value) : int64_t(uint32_t(q.value));
            sum += v;
            lo = seen ? std::min(lo, v) : v;
            hi = seen ? std::max(hi, v) : v;
            seen = true;
        }
        for (unsigned p = 0; p < 32; ++p) {
            if (!((part >> p) & 1u)) continue;
            KThread& q = threads_[base + p];
            switch (op) {
                case WarpOp::sync: q.result = 0; break;
                case WarpOp::ballot: q.result = ballot; break;
                case WarpOp::vote_all: q.result = ballot == part; break;
                case WarpOp::vote_any: q.result = ballot != 0; break;
                case WarpOp::reduce_add: q.result = uint64_t(sum); break;
                case WarpOp::reduce_min: q.result = uint64_t(lo); break;
                case WarpOp::reduce_max: q.result = uint64_t(hi); break;
                default: {
                    // CUDA's rules: a source outside the lane's width-wide segment (up/down past
                    // its ends, xor into a later segment) returns the lane's own value.
                    const int w = q.width, lane = int(p), seg = lane / w * w, pos = lane % w;
                    int src = lane;
                    if (op == WarpOp::shfl_idx) src = seg + ((q.param % w) + w) % w;
                    if (op == WarpOp::shfl_up) src = pos - q.param >= 0 ? lane - q.param : lane;
                    if (op == WarpOp::shfl_down) src = pos + q.param < w ? lane + q.param : lane;
                    if (op == WarpOp::shfl_xor) {
                        src = lane ^ q.param;
                        if (src < 0 || src >= 32 || src / w > lane / w) src = lane;
                    }
                    if (!((part >> src) & 1u)) {
                        const bool exists = base + unsigned(src) < threads_.size();
                        fail(cudaErrorLaunchFailure,
                             "thread " + xyz(q.tid) + " (lane " + std::to_string(lane) + ") reads lane " +
                                 std::to_string(src) + " in " + op_name(op) + "(mask " + hex32(q.mask) + ") at " +
                                 where_text(q.where) + ", but lane " + std::to_string(src) +
                                 (!((q.mask >> src) & 1u) ? " is not in the mask"
                                  : exists               ? " has exited"
                                                         : " is beyond the block") +
                                 ": the value would be undefined");
                        return false;
                    }
                    q.result = threads_[base + unsigned(src)].value;
                }
            }
        }
        for (unsigned p = 0; p < 32; ++p)
            if ((part >> p) & 1u) threads_[base + p].state = State::runnable;
        return true;
    }

    // Releases __syncthreads when the whole block waits at the same one; else records why not.
    bool release_barrier() {
        const KThread* at = nullptr;
        const KThread* exited = nullptr;
        const KThread* in_warp = nullptr;
        unsigned arrived = 0;
        uint64_t count = 0;
        for (const auto& t : threads_) {
            if (t.state == State::barrier) {
                ++arrived;
                count += t.value;
                if (!at) at = &t;
                else if (!same_site(at->where, t.where) || at->barrier_op != t.barrier_op) {
                    fail(cudaErrorLaunchFailure, "threads " + xyz(at->tid) + " and " + xyz(t.tid) +
                                                     " wait at different barriers: " + where_text(at->where) + " and " +
                                                     where_text(t.where));
                    return false;
                }
            } else if (t.state == State::exited && !exited) {
                exited = &t;
            } else if (t.state == State::warp && !in_warp) {
                in_warp = &t;
            }
        }
        const unsigned n = unsigned(threads_.size());
        if (at && arrived == n) {
            for (auto& t : threads_) {
                switch (at->barrier_op) {
                    case BarrierOp::plain: t.result = 0; break;
                    case BarrierOp::count: t.result = count; break;
                    case BarrierOp::and_: t.result = count == n; break;
                    case BarrierOp::or_: t.result = count != 0; break;
                }
                t.state = State::runnable;
            }
            return true;
        }
        if (in_warp) {
            fail(cudaErrorLaunchFailure, "thread " + xyz(in_warp->tid) + " waits forever in " +
                                             op_name(in_warp->warp_op) + "(mask " + hex32(in_warp->mask) + ") at " +
                                             where_text(in_warp->where));
        } else if (at) {
            fail(cudaErrorLaunchFailure, "__syncthreads at " + where_text(at->where) + " reached by " +
                                             std::to_string(arrived) + " of " + std::to_string(n) +
                                             " threads; thread " + (exited ? xyz(exited->tid) : std::string("?")) +
                                             " had exited (a barrier in divergent code)");
        }
        return false;
    }

    Scheduler scheduler_;
    std::vector<std::unique_ptr<Fiber>> fibers_;
    std::vector<KThread> threads_;
    std::vector<unsigned> order_;
    KernelCall* call_ = nullptr;
    KThread* current_ = nullptr;
    void* dynamic_shared_ = nullptr;
    bool failed_ = false;
    cudaError_t code_ = cudaSuccess;
    std::string message_;
};

void fiber_body(Fiber& f) {
    for (;;) {
        BlockRunner& r = *tls_runner;
        auto& t = *static_cast<KThread*>(f.user);
        bool threw = false;
        try {
            r.call().run();
        } catch (...) {
            threw = true;  // fault outside the handler: this fiber never comes back to finish it
        }
        if (threw) r.fault(cudaErrorLaunchFailure, "the kernel let a C++ exception escape", std::source_location::current());
        t.state = State::exited;
        f.yield();
    }
}

BlockRunner& runner() {
    thread_local BlockRunner r;
    tls_runner = &r;
    return r;
}

BlockRunner& in_kernel(const char* what) {
    if (!tls_runner || !tls_runner->current()) {
        std::fprintf(stderr, "cudaemu: %s called outside a kernel\n", what);
        std::abort();
    }
    return *tls_runner;
}

}  // namespace

int block_barrier(BarrierOp op, int predicate, std::source_location where) {
    return in_kernel("__syncthreads").barrier(op, predicate, where);
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int param, int width, bool is_signed,
                         std::source_location where) {
    return in_kernel(op_name(op)).collective(op, mask, value, param, width, is_signed, where);
}

unsigned active_mask() { return in_kernel("__activemask").active_mask(); }

void kernel_fault(cudaError_t code, const char* what, std::source_location where) {
    in_kernel(what).fault(code, what, where);
}

void* dynamic_shared_memory() { return in_kernel("dynamic shared memory").dynamic_shared(); }

// Blocks in forward, reverse or a seeded random order (an affine permutation of the block ids).
void run_grid(KernelCall& call, dim3 grid, dim3 block, size_t dynamic_shared_bytes, const std::string& name,
              uint64_t launch_id) {
    Device& d = device();
    Schedule schedule;
    bool poison;
    {
        std::lock_guard lock(d.mu);
        schedule = d.config.schedule;
        poison = d.config.poison;
    }
    const uint64_t total = uint64_t(grid.x) * grid.y * grid.z;
    uint64_t rng = schedule.seed ^ (launch_id * 0xd1342543de82ef95ull);
    uint64_t a = 1, b = 0;
    if (schedule.order == Order::random && total > 1) {
        do a = splitmix(rng) % total; while (a == 0 || std::gcd(a, total) != 1);
        b = splitmix(rng) % total;
    }
    BlockRunner& r = runner();
    for (uint64_t i = 0; i < total; ++i) {
        uint64_t id = i;
        if (schedule.order == Order::reverse) id = total - 1 - i;
        if (schedule.order == Order::random) id = uint64_t((unsigned __int128)(a) * i % total + b) % total;
        const uint3 bi{unsigned(id % grid.x), unsigned(id / grid.x % grid.y), unsigned(id / (uint64_t(grid.x) * grid.y))};
        bool ok;
        {
            std::lock_guard one_block_at_a_time(d.sm);
            ok = r.run(call, grid, block, bi, dynamic_shared_bytes, schedule, launch_id, poison);
        }
        if (!ok) {
            device_fault(r.code(), name + ": " + r.message());
            return;
        }
    }
}

}  // namespace cudaemu::detail
