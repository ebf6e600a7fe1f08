// What the CUDA runtime says about the devices. Safe to call in every build: without CUDA
// support compiled in, or without a usable device (no driver returns an error, not 0 devices),
// it reports no device and the reason.
#pragma once

#include <string>
#include <vector>

namespace sluice::cuda {

struct DeviceInfo {
    int index = 0;
    std::string name;
    int sm_major = 0;
    int sm_minor = 0;
    size_t total_bytes = 0;
    int n_multiprocessors = 0;
    size_t free_bytes = 0;        // free device memory when queried (cudaMemGetInfo)
};

struct DeviceQuery {
    bool compiled = false;        // CUDA support built into this binary
    std::vector<DeviceInfo> devices;
    std::string reason;           // why there is no device, when devices is empty
};

DeviceQuery query_devices();

// Page-locks host memory for fast, asynchronous host-to-device copies (cudaHostRegister), when
// CUDA is built and a device exists; false otherwise (the memory stays ordinary, and usable).
// The staging buffers the io layer fills are pinned this way so the CUDA path copies straight
// from them, with no bounce through another buffer.
bool pin_host_memory(void* data, size_t bytes);

// The most device memory the process held at once, as the device's allocator counts it, where the
// allocator can tell (the emulated device); 0 elsewhere (CUDA has no such figure).
size_t allocator_peak_bytes();
void unpin_host_memory(void* data);

}  // namespace sluice::cuda
