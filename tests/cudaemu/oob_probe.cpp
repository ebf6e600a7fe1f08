// Built with ASan (tests/cudaemu/meson.build): runs one kernel that stays in bounds ("none") or
// overruns static shared memory, dynamic shared memory or a device allocation by one element.
// mutation_test.cpp expects ASan's report for each overrun.
#include <cstdio>
#include <cstring>

#include "kernels/cuda/launch.hpp"

namespace {

// UBSan's bounds and object-size checks would stop this first: off here, so the report proves
// ASan's redzones around the static shared variables.
__attribute__((no_sanitize("undefined"))) __global__ void static_shared_kernel(float* out, int extra) {
    __shared__ float s[64];
    float* p = s;
    p[threadIdx.x + extra] = 1.0f;  // extra = 1: thread 63 writes s[64]
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

__global__ void dynamic_shared_kernel(float* out, int extra) {
    SLUICE_DYNAMIC_SHARED(float, s);
    s[threadIdx.x + extra] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

__global__ void device_kernel(float* out, int extra) { out[threadIdx.x + extra] = 1.0f; }

}  // namespace

int main(int argc, char** argv) {
    const char* what = argc > 1 ? argv[1] : "none";
    const int extra = std::strcmp(what, "none") == 0 ? 0 : 1;
    float* out = nullptr;
    if (cudaMalloc(reinterpret_cast<void**>(&out), 64 * sizeof(float)) != cudaSuccess) return 2;
    using sluice::cuda::launch_kernel;
    cudaError_t e = cudaSuccess;
    if (extra == 0 || std::strcmp(what, "static_shared") == 0) e = launch_kernel(static_shared_kernel, 1, 64, 0, nullptr, out, extra);
    if (extra == 0 || std::strcmp(what, "dynamic_shared") == 0)
        e = launch_kernel(dynamic_shared_kernel, 1, 64, 64 * sizeof(float), nullptr, out, extra);
    if (extra == 0 || std::strcmp(what, "device") == 0) e = launch_kernel(device_kernel, 1, 64, 0, nullptr, out, extra);
    if (e != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) return 3;
    std::printf("probe ok\n");
    return 0;
}
