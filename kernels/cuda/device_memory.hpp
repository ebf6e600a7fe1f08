// RAII owners of device memory (cudaMalloc) and pinned host memory (cudaHostAlloc). Pinned
// buffers are what the streamer's segments must live in for cudaMemcpyAsync to run as a true
// DMA overlapped with compute; pageable memory makes the copy synchronous and half as fast.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "kernels/cuda/cuda_error.hpp"

namespace sluice::cuda {

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t size_bytes) : size_bytes_(size_bytes) {
        if (size_bytes == 0) return;
        const cudaError_t status = cudaMalloc(&data_, size_bytes);
        if (status != cudaSuccess) {
            data_ = nullptr;
            size_bytes_ = 0;
            throw_allocation_error(int(status), size_bytes, "cudaMalloc");
        }
    }
    ~DeviceBuffer() { release(); }
    DeviceBuffer(DeviceBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_bytes_(std::exchange(o.size_bytes_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) {
            release();
            data_ = std::exchange(o.data_, nullptr);
            size_bytes_ = std::exchange(o.size_bytes_, 0);
        }
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    void* data() const { return data_; }
    template <typename T>
    T* as() const { return static_cast<T*>(data_); }
    size_t size_bytes() const { return size_bytes_; }

    // Keeps the contents unspecified; reallocates only when growing (a one-time cost per shape,
    // so steady-state steps allocate nothing).
    void ensure(size_t size_bytes) {
        if (size_bytes > size_bytes_) *this = DeviceBuffer(size_bytes);
    }

private:
    void release() {
        if (data_) cudaFree(data_);  // no throw from a destructor; a failed free leaks
        data_ = nullptr;
    }
    void* data_ = nullptr;
    size_t size_bytes_ = 0;
};

class PinnedBuffer {
public:
    PinnedBuffer() = default;
    explicit PinnedBuffer(size_t size_bytes) : size_bytes_(size_bytes) {
        if (size_bytes == 0) return;
        const cudaError_t status = cudaHostAlloc(&data_, size_bytes, cudaHostAllocPortable);
        if (status != cudaSuccess) {
            data_ = nullptr;
            size_bytes_ = 0;
            throw_allocation_error(int(status), size_bytes, "cudaHostAlloc (pinned host memory)");
        }
    }
    ~PinnedBuffer() {
        if (data_) cudaFreeHost(data_);
    }
    PinnedBuffer(PinnedBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_bytes_(std::exchange(o.size_bytes_, 0)) {}
    PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
        if (this != &o) {
            if (data_) cudaFreeHost(data_);
            data_ = std::exchange(o.data_, nullptr);
            size_bytes_ = std::exchange(o.size_bytes_, 0);
        }
        return *this;
    }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;

    void* data() const { return data_; }
    template <typename T>
    T* as() const { return static_cast<T*>(data_); }
    size_t size_bytes() const { return size_bytes_; }

private:
    void* data_ = nullptr;
    size_t size_bytes_ = 0;
};

// Pins an existing host range (an mmap'd or aligned segment buffer) for the buffer's lifetime.
class HostRegistration {
public:
    HostRegistration(void* data, size_t size_bytes) : data_(data) {
        SLUICE_CUDA_CHECK(cudaHostRegister(data, size_bytes, cudaHostRegisterPortable));
    }
    ~HostRegistration() { cudaHostUnregister(data_); }
    HostRegistration(const HostRegistration&) = delete;
    HostRegistration& operator=(const HostRegistration&) = delete;

private:
    void* data_;
};

}  // namespace sluice::cuda
