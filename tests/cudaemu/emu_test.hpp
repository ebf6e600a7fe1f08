// Helpers of the emulator's own tests: device buffers of host vectors, the emulator's error, and
// the three thread orders every kernel claim is checked under.
#pragma once

#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "cudaemu/cudaemu.hpp"
#include "kernels/cuda/launch.hpp"

namespace emu_test {

using sluice::cuda::launch_kernel;

template <typename T>
T* upload(const std::vector<T>& v) {
    void* p = nullptr;
    REQUIRE(cudaMalloc(&p, v.size() * sizeof(T)) == cudaSuccess);
    REQUIRE(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    return static_cast<T*>(p);
}

template <typename T>
T* device_array(size_t n) {
    void* p = nullptr;
    REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
    return static_cast<T*>(p);
}

template <typename T>
std::vector<T> download(const T* p, size_t n) {
    std::vector<T> v(n);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
}

// Waits for the device and returns the error it recorded ("" if none), clearing it.
inline std::string device_error() {
    cudaDeviceSynchronize();
    return cudaemu::take_error();
}

inline const cudaemu::Order kOrders[] = {cudaemu::Order::random, cudaemu::Order::forward, cudaemu::Order::reverse};

// Sets a schedule for the scope, restoring the previous one after.
struct ScopedSchedule {
    explicit ScopedSchedule(cudaemu::Order order, uint64_t seed = 1) : saved(cudaemu::schedule()) {
        cudaemu::set_schedule({order, seed});
    }
    ~ScopedSchedule() { cudaemu::set_schedule(saved); }
    cudaemu::Schedule saved;
};

struct ScopedCopyModel {
    explicit ScopedCopyModel(cudaemu::CopyModel m) : saved(cudaemu::copy_model()) { cudaemu::set_copy_model(m); }
    ~ScopedCopyModel() { cudaemu::set_copy_model(saved); }
    cudaemu::CopyModel saved;
};

}  // namespace emu_test
