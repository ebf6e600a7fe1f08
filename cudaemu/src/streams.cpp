// cudaemu: streams as worker threads, events, and the legacy default stream's implicit ordering.
// Each stream's worker executes its queue in order (kernels, copies, cuBLAS calls, event records
// and waits); an operation on the legacy default stream waits for everything queued before it on
// the blocking streams, and their later work waits for it, as CUDA defines. Modelled copy time
// and random delays are slept on the worker, before the operation touches memory, so a host that
// reuses a pinned buffer too early sees the copy read the new contents.
#include <cstdio>
#include <cstdlib>
#include <random>

#include "cuda_runtime.h"
#include "device_state.hpp"

namespace cudaemu::detail {

namespace {

void worker_loop(std::shared_ptr<Stream> s);

std::shared_ptr<Stream> make_stream(Device& d, unsigned flags, bool legacy) {
    auto s = std::make_shared<Stream>();
    s->flags = flags;
    s->legacy = legacy;
    s->id = d.next_stream_id++;
    d.streams[s.get()] = s;
    s->worker = std::thread(worker_loop, s);
    return s;
}

// Joins the workers of destroyed streams that have drained. Call with mu held.
void reap_retired(Device& d, bool all, std::unique_lock<std::mutex>& lock) {
    std::vector<std::shared_ptr<Stream>> joinable;
    for (auto it = d.retired.begin(); it != d.retired.end();) {
        if (all || (*it)->exited) {
            joinable.push_back(*it);
            it = d.retired.erase(it);
        } else {
            ++it;
        }
    }
    lock.unlock();
    for (auto& s : joinable) s->worker.join();
    lock.lock();
}

void close_stream(Device& d, const std::shared_ptr<Stream>& s) {
    d.streams.erase(s.get());
    s->closing = true;
    d.retired.push_back(s);
    d.progress.notify_all();
}

// Host threads' per-thread default streams (cudaStreamPerThread): blocking streams of their own.
struct PerThreadStream {
    std::shared_ptr<Stream> stream;
    ~PerThreadStream() {
        if (!stream) return;
        Device& d = device();
        std::lock_guard lock(d.mu);
        close_stream(d, stream);
    }
};
thread_local PerThreadStream per_thread_stream;

void shutdown() {
    Device& d = device();
    std::unique_lock lock(d.mu);
    synchronize_all(lock);
    std::vector<std::shared_ptr<Stream>> live;
    for (auto& [p, s] : d.streams) live.push_back(s);
    for (auto& s : live) close_stream(d, s);
    d.legacy.reset();
    reap_retired(d, true, lock);
}

bool ready(const Op& op) {
    for (const auto& [s, seq] : op.after)
        if (s->completed < seq) return false;
    return !op.wait || op.wait->done;
}

void modelled_delay(const Op& op, std::mt19937_64& rng, const CopyModel& model) {
    double us = 0;
    if (model.jitter_us > 0) us += std::uniform_real_distribution<double>(0, model.jitter_us)(rng);
    if (op.bus_bytes > 0) {
        us += model.latency_us;
        if (model.gb_per_s > 0) us += double(op.bus_bytes) / (model.gb_per_s * 1e3);
    }
    if (us > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::micro>(us));
}

void worker_loop(std::shared_ptr<Stream> s) {
    Device& d = device();
    std::unique_lock lock(d.mu);
    std::mt19937_64 rng(d.config.schedule.seed * 0x9e3779b97f4a7c15ull + s->id);
    for (;;) {
        d.progress.wait(lock, [&] { return !s->queue.empty() || s->closing; });
        if (s->queue.empty()) break;
        d.progress.wait(lock, [&] { return ready(s->queue.front()); });
        Op op = std::move(s->queue.front());
        bool skip = d.sticky != cudaSuccess;  // a faulted device executes nothing more
        if (!skip && op.body && d.fault_countdown > 0 && --d.fault_countdown == 0) {
            skip = true;  // inject_fault: this operation fails
            d.sticky = cudaErrorLaunchFailure;
            d.sticky_message = "injected fault (cudaemu::inject_fault) on stream " + std::to_string(s->id);
            std::fprintf(stderr, "cudaemu: cudaErrorLaunchFailure: %s\n", d.sticky_message.c_str());
        }
        const CopyModel model = d.config.copies;
        lock.unlock();
        if (!skip && op.body) {
            modelled_delay(op, rng, model);
            op.body();
        }
        op.body = nullptr;  // release what the operation captured before reporting completion
        lock.lock();
        if (op.host_read) d.host_reads.erase(op.host_read);
        if (op.record) {
            op.record->done = true;
            op.record->when = std::chrono::steady_clock::now();
        }
        s->queue.pop_front();
        ++s->completed;
        d.progress.notify_all();
    }
    s->exited = true;
    d.progress.notify_all();
}

struct CUevent_impl {
    unsigned flags = 0;
    std::shared_ptr<Marker> last;  // the latest record, null before the first
};

CUevent_impl* event_of(cudaEvent_t e) { return reinterpret_cast<CUevent_impl*>(e); }

}  // namespace

Device& device() {
    // Never destroyed: workers may outlive static destructors; they are joined at exit instead.
    static Device* d = [] {
        auto* dev = new Device;
        dev->config = config_from_environment();
        std::atexit(shutdown);
        return dev;
    }();
    return *d;
}

std::shared_ptr<Stream> resolve_stream(cudaStream_t handle) {
    Device& d = device();
    if (handle == nullptr || handle == cudaStreamLegacy) {
        if (!d.legacy) d.legacy = make_stream(d, 0, true);
        return d.legacy;
    }
    if (handle == cudaStreamPerThread) {
        if (!per_thread_stream.stream) per_thread_stream.stream = make_stream(d, 0, false);
        return per_thread_stream.stream;
    }
    auto it = d.streams.find(reinterpret_cast<Stream*>(handle));
    if (it == d.streams.end() || it->second->legacy) return nullptr;
    return it->second;
}

uint64_t enqueue(Stream& s, Op op) {
    Device& d = device();
    const bool blocking = (s.flags & cudaStreamNonBlocking) == 0;
    if (s.legacy) {
        for (auto& [p, other] : d.streams)
            if (!other->legacy && (other->flags & cudaStreamNonBlocking) == 0 && other->enqueued > other->completed)
                op.after.emplace_back(other, other->enqueued);
    } else if (blocking && d.legacy && d.legacy->enqueued > d.legacy->completed) {
        op.after.emplace_back(d.legacy, d.legacy->enqueued);
    }
    s.queue.push_back(std::move(op));
    d.progress.notify_all();
    return ++s.enqueued;
}

void wait_for(std::unique_lock<std::mutex>& lock, Stream& s, uint64_t seq) {
    device().progress.wait(lock, [&] { return s.completed >= seq; });
}

void count_host_wait(bool blocked) {
    Device& d = device();
    ++d.waits.calls;
    d.waits.blocked += blocked;
}

void host_wait_for(std::unique_lock<std::mutex>& lock, Stream& s, uint64_t seq) {
    count_host_wait(s.completed < seq);
    wait_for(lock, s, seq);
}

void synchronize_all(std::unique_lock<std::mutex>& lock) {
    Device& d = device();
    std::vector<std::pair<std::shared_ptr<Stream>, uint64_t>> targets;
    for (auto& [p, s] : d.streams) targets.emplace_back(s, s->enqueued);
    for (auto& s : d.retired) targets.emplace_back(s, s->enqueued);
    for (auto& [s, seq] : targets) wait_for(lock, *s, seq);
}

}  // namespace cudaemu::detail

using namespace cudaemu::detail;

extern "C" {

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
    if (!stream || (flags & ~unsigned(cudaStreamNonBlocking)) != 0) return api_error(cudaErrorInvalidValue);
    if (auto e = sticky_error()) return e;
    Device& d = device();
    std::unique_lock lock(d.mu);
    reap_retired(d, false, lock);
    *stream = reinterpret_cast<cudaStream_t>(make_stream(d, flags, false).get());
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

// Returns at once; the worker finishes the queued work first, as CUDA's does.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread)
        return api_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy of a default stream");
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy of an unknown stream");
    close_stream(d, s);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    Device& d = device();
    std::unique_lock lock(d.mu);
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize of an unknown stream");
    host_wait_for(lock, *s, s->enqueued);
    return d.sticky;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle);
    if (d.sticky) return d.sticky;
    return s->completed == s->enqueued ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaDeviceSynchronize(void) {
    Device& d = device();
    std::unique_lock lock(d.mu);
    bool busy = false;
    for (auto& [p, s] : d.streams) busy = busy || s->completed < s->enqueued;
    count_host_wait(busy);
    synchronize_all(lock);
    return d.sticky;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
    if (!fn) return api_error(cudaErrorInvalidValue);
    if (auto e = sticky_error()) return e;
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle);
    Op op;
    op.body = [fn, user_data] { fn(user_data); };
    enqueue(*s, std::move(op));
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
    if (!event || (flags & ~unsigned(cudaEventBlockingSync | cudaEventDisableTiming)) != 0)
        return api_error(cudaErrorInvalidValue);
    auto* e = new CUevent_impl;
    e->flags = flags;
    *event = reinterpret_cast<cudaEvent_t>(e);
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    if (!event) return api_error(cudaErrorInvalidResourceHandle);
    Device& d = device();
    std::lock_guard lock(d.mu);  // a worker may be completing its marker: the marker is shared, the event not
    delete event_of(event);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    if (!event) return api_error(cudaErrorInvalidResourceHandle);
    if (auto e = sticky_error()) return e;
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle, "cudaEventRecord on an unknown stream");
    auto marker = std::make_shared<Marker>();
    event_of(event)->last = marker;
    Op op;
    op.record = marker;
    enqueue(*s, std::move(op));
    return cudaSuccess;
}

// The stream's worker stops at this point of its queue until the event's latest record (at the
// time of this call) completed.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    if (!event || flags != 0) return api_error(cudaErrorInvalidValue);
    if (auto e = sticky_error()) return e;
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent on an unknown stream");
    if (auto marker = event_of(event)->last) {
        Op op;
        op.wait = marker;
        enqueue(*s, std::move(op));
    }
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
    if (!event) return api_error(cudaErrorInvalidResourceHandle);
    Device& d = device();
    std::lock_guard lock(d.mu);
    if (d.sticky) return d.sticky;
    const auto& m = event_of(event)->last;
    return !m || m->done ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    if (!event) return api_error(cudaErrorInvalidResourceHandle);
    Device& d = device();
    std::unique_lock lock(d.mu);
    if (auto m = event_of(event)->last) {
        count_host_wait(!m->done);
        d.progress.wait(lock, [&] { return m->done; });
    } else {
        count_host_wait(false);
    }
    return d.sticky;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms || !start || !end) return api_error(cudaErrorInvalidValue);
    Device& d = device();
    std::lock_guard lock(d.mu);
    const auto* a = event_of(start);
    const auto* b = event_of(end);
    if ((a->flags | b->flags) & cudaEventDisableTiming)
        return api_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime on an event created without timing");
    if (!a->last || !b->last) return api_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime of an unrecorded event");
    if (!a->last->done || !b->last->done) return api_error(cudaErrorNotReady);
    *ms = std::chrono::duration<float, std::milli>(b->last->when - a->last->when).count();
    return cudaSuccess;
}

}  // extern "C"
