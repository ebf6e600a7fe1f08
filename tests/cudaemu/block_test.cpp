// The emulated block: thread and block coordinates, __syncthreads and its count/and/or forms,
// static and dynamic shared memory (fresh and poisoned for every block), atomics, launch checks,
// and the faults a real device would hang on or leave undefined.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "emu_test.hpp"

using namespace emu_test;

namespace {

__global__ void coordinates_kernel(unsigned* seen) {
    const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    atomicAdd(&seen[block * (blockDim.x * blockDim.y * blockDim.z) + thread], 1u);
}

// Each thread publishes its id, then reads its neighbour's: right only after the barrier.
__global__ void rotate_kernel(int* out) {
    __shared__ int s[256];
    s[threadIdx.x] = int(threadIdx.x) * 3;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void barrier_forms_kernel(int* out) {
    const int even = threadIdx.x % 2 == 0;
    out[0] = __syncthreads_count(even);
    out[1] = __syncthreads_and(threadIdx.x < 1000);
    out[2] = __syncthreads_or(threadIdx.x == 77);
    out[3] = __syncthreads_and(even);
}

__global__ void early_exit_kernel(float* out) {
    if (threadIdx.x >= 16) return;
    __syncthreads();  // the 16 threads that left never arrive
    out[threadIdx.x] = 1.0f;
}

__global__ void two_barriers_kernel(float* out) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// Reads the static shared word before writing it: every block must find the poison, not the
// previous block's value.
__global__ void fresh_shared_kernel(unsigned* out) {
    __shared__ unsigned word;
    if (threadIdx.x == 0) {
        out[blockIdx.x] = word;
        word = blockIdx.x;
    }
}

__global__ void dynamic_shared_kernel(unsigned* out, int n) {
    SLUICE_DYNAMIC_SHARED(unsigned, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = blockIdx.x * 1000u + unsigned(i);
    __syncthreads();
    unsigned sum = 0;
    if (threadIdx.x == 0)
        for (int i = 0; i < n; ++i) sum += s[i];
    if (threadIdx.x == 0) out[blockIdx.x] = sum;
}

__global__ void atomics_kernel(float* fsum, int* isum, int* imax, unsigned* ring, unsigned long long* cas_count) {
    const int id = int(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(fsum, 0.5f);
    atomicAdd(isum, id);
    atomicMax(imax, id * 7 % 1000);
    atomicInc(ring, 9u);
    unsigned long long old = *cas_count, seen;
    do {
        seen = old;
        old = atomicCAS(cas_count, seen, seen + 1);
    } while (old != seen);
}

__global__ void misaligned_ldg_kernel(const float* p, float* out) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p + 1));
    out[0] = v.x;
}

__global__ void nothing_kernel() {}

__global__ void dp4a_kernel(const int* a, const int* b, int* out) {
    const int i = int(threadIdx.x);
    out[2 * i] = __dp4a(a[i], b[i], i);
    out[2 * i + 1] = int(__dp4a(unsigned(a[i]), unsigned(b[i]), unsigned(i)));
}

}  // namespace

TEST_CASE("every thread of a 3-D grid of 3-D blocks runs exactly once with its own coordinates") {
    for (auto order : kOrders) {
        ScopedSchedule s(order);
        const dim3 grid(3, 2, 2), block(4, 3, 2);
        const size_t n = 12 * 24;
        auto* seen = upload(std::vector<unsigned>(n, 0));
        REQUIRE(launch_kernel(coordinates_kernel, grid, block, 0, nullptr, seen) == cudaSuccess);
        const auto got = download(seen, n);
        CHECK(std::all_of(got.begin(), got.end(), [](unsigned c) { return c == 1; }));
        cudaFree(seen);
    }
}

TEST_CASE("__syncthreads publishes shared memory to the whole block in every thread order") {
    for (auto order : kOrders) {
        CAPTURE(cudaemu::order_name(order));
        ScopedSchedule s(order, 7);
        auto* out = device_array<int>(256);
        launch_kernel(rotate_kernel, 1, 256, 0, nullptr, out);
        const auto got = download(out, 256);
        for (int t = 0; t < 256; ++t) CHECK(got[size_t(t)] == ((t + 1) % 256) * 3);
        CHECK(device_error().empty());
        cudaFree(out);
    }
}

TEST_CASE("__syncthreads_count / _and / _or combine the predicates of the whole block") {
    auto* out = device_array<int>(4);
    launch_kernel(barrier_forms_kernel, 1, 96, 0, nullptr, out);
    const auto got = download(out, 4);
    CHECK(got[0] == 48);
    CHECK(got[1] == 1);
    CHECK(got[2] == 1);
    CHECK(got[3] == 0);
    cudaFree(out);
}

TEST_CASE("a __syncthreads some threads never reach is an error naming the barrier, not a hang") {
    auto* out = device_array<float>(32);
    launch_kernel(early_exit_kernel, 1, 32, 0, nullptr, out);
    const std::string e = device_error();
    CHECK(e.find("cudaErrorLaunchFailure") != std::string::npos);
    CHECK(e.find("reached by 16 of 32 threads") != std::string::npos);
    CHECK(e.find("block_test.cpp") != std::string::npos);
    // The device works again once the error is taken.
    launch_kernel(rotate_kernel, 1, 32, 0, nullptr, reinterpret_cast<int*>(out));
    CHECK(device_error().empty());
    cudaFree(out);
}

TEST_CASE("threads waiting at two different __syncthreads are reported") {
    auto* out = device_array<float>(64);
    launch_kernel(two_barriers_kernel, 1, 64, 0, nullptr, out);
    CHECK(device_error().find("wait at different barriers") != std::string::npos);
    cudaFree(out);
}

TEST_CASE("static shared memory starts as poison in every block, whatever the block before left") {
    for (auto order : kOrders) {
        ScopedSchedule s(order);
        auto* out = device_array<unsigned>(40);
        launch_kernel(fresh_shared_kernel, 40, 64, 0, nullptr, out);
        const auto got = download(out, 40);
        CHECK(std::all_of(got.begin(), got.end(), [](unsigned v) { return v == 0xffffffffu; }));
        cudaFree(out);
    }
}

TEST_CASE("dynamic shared memory is the launch's size, one allocation per block") {
    const int n = 3000;  // 12000 bytes
    auto* out = device_array<unsigned>(5);
    REQUIRE(launch_kernel(dynamic_shared_kernel, 5, 128, n * sizeof(unsigned), nullptr, out, n) == cudaSuccess);
    const auto got = download(out, 5);
    for (unsigned b = 0; b < 5; ++b) CHECK(got[b] == unsigned(n) * b * 1000u + unsigned(n) * (n - 1) / 2);
    cudaFree(out);
}

TEST_CASE("atomics on device memory add, maximise, wrap and compare-and-swap across blocks") {
    std::vector<float> f{0};
    std::vector<int> i{0}, m{-1};
    std::vector<unsigned> r{0};
    std::vector<unsigned long long> c{0};
    auto *df = upload(f);
    auto *di = upload(i), *dm = upload(m);
    auto* dr = upload(r);
    auto* dc = upload(c);
    launch_kernel(atomics_kernel, 10, 100, 0, nullptr, df, di, dm, dr, dc);
    CHECK(download(df, 1)[0] == 500.0f);
    CHECK(download(di, 1)[0] == 999 * 1000 / 2);
    int want_max = 0;
    for (int id = 0; id < 1000; ++id) want_max = std::max(want_max, id * 7 % 1000);
    CHECK(download(dm, 1)[0] == want_max);
    CHECK(download(dr, 1)[0] == 1000u % 10u);
    CHECK(download(dc, 1)[0] == 1000ull);
    cudaFree(df);
    cudaFree(di);
    cudaFree(dm);
    cudaFree(dr);
    cudaFree(dc);
}

TEST_CASE("a misaligned __ldg of a 16-byte vector faults with cudaErrorMisalignedAddress") {
    auto* p = device_array<float>(16);
    launch_kernel(misaligned_ldg_kernel, 1, 1, 0, nullptr, static_cast<const float*>(p), p);
    CHECK(device_error().find("cudaErrorMisalignedAddress") != std::string::npos);
    cudaFree(p);
}

TEST_CASE("__dp4a sums four signed (or unsigned) byte products onto the accumulator") {
    std::vector<int> a(64), b(64);
    for (int i = 0; i < 64; ++i) {
        a[size_t(i)] = int(0x9e3779b9u * unsigned(i + 1));
        b[size_t(i)] = int(0x85ebca6bu * unsigned(i + 7));
    }
    auto *da = upload(a), *db = upload(b);
    auto* out = device_array<int>(128);
    launch_kernel(dp4a_kernel, 1, 64, 0, nullptr, static_cast<const int*>(da), static_cast<const int*>(db), out);
    const auto got = download(out, 128);
    for (int i = 0; i < 64; ++i) {
        int s = i;
        unsigned u = unsigned(i);
        for (int k = 0; k < 4; ++k) {
            const int x = (a[size_t(i)] >> (8 * k)) & 0xff, y = (b[size_t(i)] >> (8 * k)) & 0xff;
            s += int(int8_t(x)) * int(int8_t(y));
            u += unsigned(x) * unsigned(y);
        }
        CHECK(got[size_t(2 * i)] == s);
        CHECK(unsigned(got[size_t(2 * i + 1)]) == u);
    }
    cudaFree(da);
    cudaFree(db);
    cudaFree(out);
}

TEST_CASE("launch configurations beyond the device's limits are refused at launch") {
    CHECK(launch_kernel(nothing_kernel, 1, 1025, 0, nullptr) == cudaErrorInvalidConfiguration);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(launch_kernel(nothing_kernel, dim3(1, 70000), 32, 0, nullptr) == cudaErrorInvalidConfiguration);
    CHECK(launch_kernel(nothing_kernel, 0, 32, 0, nullptr) == cudaErrorInvalidConfiguration);
    CHECK(launch_kernel(nothing_kernel, 1, 32, 64 << 10, nullptr) == cudaErrorInvalidValue);
    REQUIRE(cudaFuncSetAttribute(nothing_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10) == cudaSuccess);
    CHECK(launch_kernel(nothing_kernel, 1, 32, 64 << 10, nullptr) == cudaSuccess);
    CHECK(launch_kernel(nothing_kernel, 1, 32, 0, reinterpret_cast<cudaStream_t>(0x1234)) ==
          cudaErrorInvalidResourceHandle);
    cudaGetLastError();
    CHECK(device_error().empty());
}

TEST_CASE("the device reports itself as emulated, sm_89, with the configured memory") {
    int n = 0;
    REQUIRE(cudaGetDeviceCount(&n) == cudaSuccess);
    CHECK(n == 1);
    cudaDeviceProp p{};
    REQUIRE(cudaGetDeviceProperties(&p, 0) == cudaSuccess);
    CHECK(std::string(p.name).find("emulated") != std::string::npos);
    CHECK(p.major == 8);
    CHECK(p.minor == 9);
    CHECK(p.totalGlobalMem == cudaemu::device_memory().capacity_bytes);
    int sms = 0;
    REQUIRE(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
    CHECK(sms == p.multiProcessorCount);
    CHECK(cudaGetDeviceProperties(&p, 1) == cudaErrorInvalidDevice);
    cudaGetLastError();
}
