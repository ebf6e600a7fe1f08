#include "kernels/cuda/device.hpp"

#include <cuda_runtime.h>

#ifdef CUDAEMU
#include "cudaemu/cudaemu.hpp"
#endif

namespace sluice::cuda {

DeviceQuery query_devices() {
    DeviceQuery q;
    q.compiled = true;
    int n = 0;
    // Without a driver this returns cudaErrorInsufficientDriver (35), not 0 devices: any
    // error means "no device".
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        q.reason = std::string("no usable CUDA device: ") + cudaGetErrorString(err);
        return q;
    }
    if (n == 0) {
        q.reason = "no CUDA device";
        return q;
    }
    for (int i = 0; i < n; ++i) {
        cudaDeviceProp p{};
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
        size_t free = 0, total = 0;
        if (cudaSetDevice(i) != cudaSuccess || cudaMemGetInfo(&free, &total) != cudaSuccess) {
            cudaGetLastError();
            free = 0;
        }
        q.devices.push_back({i, p.name, p.major, p.minor, p.totalGlobalMem, p.multiProcessorCount, free});
    }
    return q;
}

size_t allocator_peak_bytes() {
#ifdef CUDAEMU
    return cudaemu::device_memory().peak_bytes;
#else
    return 0;
#endif
}

bool pin_host_memory(void* data, size_t bytes) {
    static const bool have_device = !query_devices().devices.empty();
    if (!have_device || !data || bytes == 0) return false;
    return cudaHostRegister(data, bytes, cudaHostRegisterDefault) == cudaSuccess;
}

void unpin_host_memory(void* data) {
    if (data) cudaHostUnregister(data);
}

}  // namespace sluice::cuda
