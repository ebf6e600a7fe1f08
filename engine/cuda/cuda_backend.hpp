// The CUDA backend: the forward pass's ops as kernels (kernels/cuda) and cuBLAS calls on a compute
// stream, weight copies on a copy stream beside it. Built against the real CUDA runtime (a GPU) and,
// for the tests, against the emulated device (cudaemu/): the same source. This header has no CUDA
// types, so the engine includes it whether or not CUDA is built.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "engine/backend.hpp"

namespace sluice {

struct CudaBackendOptions {
    int device = 0;
    // Steps of this many tokens or more use dequantise + tensor-core GEMM; fewer, the GEMV kernels.
    int64_t gemm_min_tokens = 16;
    // Device bytes this backend may allocate in all (activations, caches, scratch, weight slots);
    // 0: no limit but the device's. An allocation past it is refused naming the budget.
    uint64_t memory_limit_bytes = 0;
    // Keep the MLA latent cache in pinned host memory, read by the device over the bus.
    bool cache_in_host_memory = false;
    // Rows of the largest weight matrix dequantised at a time for the tensor-core GEMM.
    int64_t gemm_tile_elems = int64_t(16) << 20;
};

// Device bytes a forward pass of this shape allocates on the CUDA backend: its activations, the
// backend's scratch and, when on the device, the latent cache (an upper bound: each allocation is
// counted rounded up as the backend rounds it). The device planner's activation figure.
// The backend's own scratch of reserve() in floats; *gemm_bytes gets the GEMM scratch.
uint64_t cuda_backend_scratch_floats(const ModelLayout& layout, const ForwardShape& shape,
                                     const CudaBackendOptions& options, int64_t* gemm_bytes);
uint64_t cuda_forward_device_bytes(const ModelLayout& layout, const ForwardShape& shape,
                                   const CudaBackendOptions& options, bool cache_on_device);
// The same for forward passes of these shapes made one after another on one backend (as bench and
// batch make them): the largest pass's buffers, and the largest GEMM scratch, which the backend
// keeps once grown, beside whichever pass runs.
uint64_t cuda_forward_device_bytes(const ModelLayout& layout, std::span<const ForwardShape> shapes,
                                   const CudaBackendOptions& options, bool cache_on_device);

// Throws ErrorKind::unsupported naming the reason when this build has no CUDA or the device is
// unusable.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

}  // namespace sluice
