// cudaemu internals: the one emulated device. Streams are worker threads draining their queue in
// order; everything they share with the host (queues, progress counters, allocation tables, the
// sticky error) is guarded by `mu`, and every completion wakes `progress`. Kernel blocks execute
// one at a time under `sm`, so the static __shared__ variables can be plain globals.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda_runtime_api.h"
#include "cudaemu/cudaemu.hpp"

namespace cudaemu::detail {

struct Config {
    Schedule schedule;
    CopyModel copies;
    size_t device_bytes = size_t(24) << 30;
    bool poison = true;
};
Config config_from_environment();

// Completion of one cudaEventRecord.
struct Marker {
    bool done = false;
    std::chrono::steady_clock::time_point when;
};

struct Stream;

struct Op {
    std::function<void()> body;                                // null for a record or a wait
    std::vector<std::pair<std::shared_ptr<Stream>, uint64_t>> after;  // legacy default stream order
    std::shared_ptr<Marker> wait;                              // cudaStreamWaitEvent
    std::shared_ptr<Marker> record;                            // cudaEventRecord
    size_t bus_bytes = 0;                                      // host<->device bytes, for the copy model
    uint64_t host_read = 0;                                    // its entry in Device::host_reads, or 0
};

struct Stream {
    unsigned flags = 0;
    bool legacy = false;
    uint64_t id = 0;
    std::deque<Op> queue;
    uint64_t enqueued = 0, completed = 0;
    bool closing = false;
    bool exited = false;
    std::thread worker;
};

struct HostRange {
    size_t bytes = 0;
    bool allocated = false;  // by cudaHostAlloc (freed by cudaFreeHost), else registered
};

struct Device {
    std::mutex mu;
    std::condition_variable progress;
    Config config;
    std::map<uintptr_t, size_t> allocations;  // device base -> requested bytes
    size_t current_bytes = 0, peak_bytes = 0;
    std::map<uintptr_t, HostRange> pinned;
    std::map<Stream*, std::shared_ptr<Stream>> streams;  // live streams, the legacy one included
    std::shared_ptr<Stream> legacy;
    std::vector<std::shared_ptr<Stream>> retired;  // destroyed streams whose worker may still run
    uint64_t next_stream_id = 0;
    std::map<const void*, int> max_dynamic_shared;
    cudaError_t sticky = cudaSuccess;
    std::string sticky_message;
    uint64_t launches = 0;
    // Pinned host ranges that queued (not yet completed) copies read, by id: copies_reading().
    std::map<uint64_t, std::pair<uintptr_t, size_t>> host_reads;
    uint64_t next_host_read = 1;
    HostWaits waits;             // host_waits()
    uint64_t fault_countdown = 0;  // inject_fault(): operations left before the failing one, 0: none
    std::mutex sm;  // held while a block executes
};

Device& device();

// Records a device-side error (the first one wins until take_error) and prints it.
void device_fault(cudaError_t code, const std::string& message);
// Sets the calling host thread's last error (cudaGetLastError) and returns code.
cudaError_t api_error(cudaError_t code, const std::string& message = {});
cudaError_t sticky_error();

// nullptr / cudaStreamLegacy / cudaStreamPerThread / a created stream -> the stream, or null
// when the handle is not a live stream. Call with mu held.
std::shared_ptr<Stream> resolve_stream(cudaStream_t handle);
// Queues op on s in stream order (adding the legacy default stream's implicit ordering) and
// returns its sequence number. Call with mu held.
uint64_t enqueue(Stream& s, Op op);
// Blocks the host until s completed operation seq. Call with the lock on mu.
void wait_for(std::unique_lock<std::mutex>& lock, Stream& s, uint64_t seq);
// wait_for for a call that makes the host wait (synchronisations, synchronous copies): counted
// in host_waits(). Call with the lock on mu.
void host_wait_for(std::unique_lock<std::mutex>& lock, Stream& s, uint64_t seq);
void synchronize_all(std::unique_lock<std::mutex>& lock);
void count_host_wait(bool blocked);  // call with mu held

// The device allocation that holds [p, p + bytes), or false (with a message naming what is wrong
// when p lies in an allocation but the range runs past it). Call with mu held.
bool device_range(const void* p, size_t bytes, std::string* problem = nullptr);
bool is_device_pointer(const void* p);
bool pinned_range(const void* p, size_t bytes);

// Runs a kernel's grid on the calling stream worker.
struct KernelCall;
void run_grid(KernelCall& call, dim3 grid, dim3 block, size_t dynamic_shared_bytes, const std::string& name,
              uint64_t launch_id);

std::string describe_pointer(const void* p);

}  // namespace cudaemu::detail
