#include "kernels/cuda/bench_read_kernel.hpp"

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/launch.hpp"

namespace sluice::cuda::bench {

namespace {

__global__ void read_sum_kernel(const uint4* data, size_t n, float* sink) {
    uint32_t acc = 0;
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const uint4 v = __ldg(data + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    // Only a sink write if the impossible happens keeps the loop alive without a reduction.
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = float(acc);
}

}  // namespace

void read_sum(const void* data, size_t bytes, float* sink, cudaStream_t stream) {
    int device = 0, sms = 0;
    SLUICE_CUDA_CHECK(cudaGetDevice(&device));
    SLUICE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const unsigned blocks = unsigned(std::min(sms * 8, 1024));
    launch_kernel(read_sum_kernel, blocks, 512, 0, stream, static_cast<const uint4*>(data), bytes / 16, sink);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sluice::cuda::bench
