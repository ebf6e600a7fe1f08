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
};
DeviceMemory device_memory();
void reset_peak_device_memory();
// Changes the device size; allocations already made stay.
void set_device_bytes(size_t bytes);

// The first error the device recorded since the last call (a kernel fault, a failed copy or
// cuBLAS call on a stream worker) with its explanation, or "" when none; clears it, so later
// calls work again (a real device's sticky errors last until the process exits).
std::string take_error();

}  // namespace cudaemu
