// cudaemu's own controls, for tests: the thread schedule, the copy model, device memory
// figures, and the error a kernel or copy raised. Every setting also has an environment variable
// read once at start-up (see README "Emulated CUDA device"):
//   CUDAEMU_ORDER      random (default) | forward | reverse   order of threads between barriers
//   CUDAEMU_SEED       seed of the random order and of the delays (default 1)
//   CUDAEMU_DEVICE_BYTES  device memory size, e.g. 24G (default 24 GiB, an RTX 4090)
//   CUDAEMU_COPY_GBPS, CUDAEMU_COPY_LATENCY_US  host<->device copies take latency + bytes / rate
//   CUDAEMU_JITTER_US  every stream operation starts after a random extra delay up to this
//   CUDAEMU_POISON     1 (default): fresh device and shared memory is filled with 0xff bytes
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cudaemu {

enum class Order { random, forward, reverse };
const char* order_name(Order order);

struct Schedule {
    Order order = Order::random;
    uint64_t seed = 1;
};
Schedule schedule();
void set_schedule(Schedule schedule);

struct CopyModel {
    double gb_per_s = 0;       // 0: copies take no modelled time
    double latency_us = 0;     // per host<->device copy
    double jitter_us = 0;      // random extra delay before every stream operation
};
CopyModel copy_model();
void set_copy_model(CopyModel model);

struct DeviceMemory {
    size_t capacity_bytes = 0;  // what cudaMemGetInfo reports as total
    size_t current_bytes = 0;   // allocated now (each allocation rounded up to 256 bytes)
    size_t peak_bytes = 0;      // most allocated at once since start or the last reset_peak
    size_t n_allocations = 0;
    size_t pinned_host_bytes = 0;  // host memory pinned now (cudaHostAlloc and cudaHostRegister)
};
DeviceMemory device_memory();
void reset_peak_device_memory();
// Changes the device size; allocations already made stay.
void set_device_bytes(size_t bytes);

// Host->device copies queued or running whose pinned host source overlaps [host, host + bytes):
// non-zero means the caller must not write there yet (a staging buffer refilled too early).
size_t copies_reading(const void* host, size_t bytes);

// Times the host waited for the device since start: synchronisations (stream, event, device) and
// copies that return only when done (synchronous, or to pageable memory, or from pageable memory,
// which waits for the stream first); `blocked` those that found the work unfinished.
struct HostWaits {
    uint64_t calls = 0;
    uint64_t blocked = 0;
};
HostWaits host_waits();

// The n-th stream operation (kernel, copy, memset, cuBLAS call; n >= 1) that starts from now
// fails instead of running: the device records cudaErrorLaunchFailure (sticky) as a real device's
// fault does. 0 cancels.
void inject_fault(uint64_t n);

// The first error the device recorded since the last call (a kernel fault, a failed copy or
// cuBLAS call on a stream worker) with its explanation, or "" when none; clears it, so later
// calls work again (a real device's sticky errors last until the process exits).
std::string take_error();

}  // namespace cudaemu
