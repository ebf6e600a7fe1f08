// The emulator is strict enough to catch the classic kernel and stream bugs: each kernel or
// host sequence below has a correct form and a form written wrong on purpose; the correct one
// passes under every thread order, the wrong one gives a wrong result or an emulator error.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "emu_test.hpp"

using namespace emu_test;

namespace {

// Tree sum of 256 values per block in shared memory; Synced = false drops the barrier between
// the levels of the tree.
template <bool Synced>
__global__ void block_sum_kernel(const float* x, float* out) {
    __shared__ float s[256];
    s[threadIdx.x] = x[blockIdx.x * 256 + threadIdx.x];
    __syncthreads();
    for (unsigned stride = 128; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        if (Synced) __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// y = 2x; Right = false indexes from the next block (an off-by-one block index).
template <bool Right>
__global__ void scale_kernel(const float* x, float* y, int n) {
    const int i = int((Right ? blockIdx.x : blockIdx.x + 1) * blockDim.x + threadIdx.x);
    if (i < n) y[i] = 2.0f * x[i];
}

// Sum over a warp by xor shuffles under a lane mask.
template <unsigned Mask>
__global__ void warp_total_kernel(const float* x, float* out) {
    float v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(Mask, v, o);
    if (threadIdx.x == 0) out[0] = v;
}

__global__ void add_one_kernel(float* p, int n) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) p[i] += 1.0f;
}

std::vector<float> small_integers(size_t n) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = float((i * 37) % 11);
    return v;
}

template <bool Synced>
bool block_sums_right(cudaemu::Order order, uint64_t seed) {
    ScopedSchedule s(order, seed);
    const auto x = small_integers(256 * 8);
    auto* dx = upload(x);
    auto* out = device_array<float>(8);
    launch_kernel(block_sum_kernel<Synced>, 8, 256, 0, nullptr, static_cast<const float*>(dx), out);
    const auto got = download(out, 8);
    bool right = device_error().empty();
    for (int b = 0; b < 8; ++b) {
        float want = 0;
        for (int i = 0; i < 256; ++i) want += x[size_t(b * 256 + i)];
        right &= got[size_t(b)] == want;
    }
    cudaFree(dx);
    cudaFree(out);
    return right;
}

template <bool Right>
bool scaled_right() {
    const int n = 1000;
    const auto x = small_integers(n);
    auto* dx = upload(x);
    auto* y = device_array<float>(n);
    launch_kernel(scale_kernel<Right>, (n + 255) / 256, 256, 0, nullptr, static_cast<const float*>(dx), y, n);
    const auto got = download(y, n);
    bool right = device_error().empty();
    for (int i = 0; i < n; ++i) right &= got[size_t(i)] == 2.0f * x[size_t(i)];
    cudaFree(dx);
    cudaFree(y);
    return right;
}

template <unsigned Mask>
std::string warp_total_error(float* total) {
    const auto x = small_integers(32);
    auto* dx = upload(x);
    auto* out = device_array<float>(1);
    launch_kernel(warp_total_kernel<Mask>, 1, 32, 0, nullptr, static_cast<const float*>(dx), out);
    const std::string e = device_error();
    *total = download(out, 1)[0];
    cudaFree(dx);
    cudaFree(out);
    return e;
}

// A copy stream uploads i for every i; the compute stream adds one, after the copy's event
// when `wait`.
bool copy_then_compute_right(bool wait) {
    ScopedCopyModel slow({0, 20000, 0});  // each host<->device copy takes 20 ms
    const int n = 4096;
    cudaStream_t copy, compute;
    REQUIRE(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking) == cudaSuccess);
    cudaEvent_t copied;
    REQUIRE(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming) == cudaSuccess);
    float* pinned = nullptr;
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), n * 4, cudaHostAllocDefault) == cudaSuccess);
    for (int i = 0; i < n; ++i) pinned[i] = float(i);
    auto* d = device_array<float>(n);
    REQUIRE(cudaMemcpyAsync(d, pinned, n * 4, cudaMemcpyHostToDevice, copy) == cudaSuccess);
    REQUIRE(cudaEventRecord(copied, copy) == cudaSuccess);
    if (wait) REQUIRE(cudaStreamWaitEvent(compute, copied, 0) == cudaSuccess);
    launch_kernel(add_one_kernel, n / 256, 256, 0, compute, d, n);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const auto got = download(d, n);
    bool right = true;
    for (int i = 0; i < n; ++i) right &= got[size_t(i)] == float(i) + 1.0f;
    cudaEventDestroy(copied);
    cudaStreamDestroy(copy);
    cudaStreamDestroy(compute);
    cudaFreeHost(pinned);
    cudaFree(d);
    return right;
}

// Uploads ones from a pinned buffer, then refills the buffer with twos: after the copy
// finished when `wait`, right away otherwise.
bool pinned_reuse_right(bool wait) {
    ScopedCopyModel slow({0, 20000, 0});
    const int n = 1024;
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    float* pinned = nullptr;
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), n * 4, cudaHostAllocDefault) == cudaSuccess);
    std::fill(pinned, pinned + n, 1.0f);
    auto* d = device_array<float>(n);
    REQUIRE(cudaMemcpyAsync(d, pinned, n * 4, cudaMemcpyHostToDevice, s) == cudaSuccess);
    if (wait) REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    std::fill(pinned, pinned + n, 2.0f);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    const auto got = download(d, n);
    const bool right = std::all_of(got.begin(), got.end(), [](float v) { return v == 1.0f; });
    cudaStreamDestroy(s);
    cudaFreeHost(pinned);
    cudaFree(d);
    return right;
}

#if defined(__SANITIZE_THREAD__)
constexpr bool kUnderTsan = true;  // the racy forms are what TSan reports: not run there
#else
constexpr bool kUnderTsan = false;
#endif

}  // namespace

TEST_CASE("mutation: a tree reduction missing its __syncthreads gives wrong sums; with it, right in every order") {
    for (auto order : kOrders)
        for (uint64_t seed : {1, 2, 3}) {
            CAPTURE(cudaemu::order_name(order));
            CAPTURE(seed);
            CHECK(block_sums_right<true>(order, seed));
        }
    for (uint64_t seed : {1, 2, 3, 4, 5}) {
        CAPTURE(seed);
        CHECK_FALSE(block_sums_right<false>(cudaemu::Order::random, seed));
    }
    CHECK_FALSE(block_sums_right<false>(cudaemu::Order::forward, 1));
}

TEST_CASE("mutation: an off-by-one block index leaves outputs unwritten (poison), caught by value") {
    CHECK(scaled_right<true>());
    CHECK_FALSE(scaled_right<false>());
}

TEST_CASE("mutation: a shuffle with a wrong lane mask is an emulator error") {
    float total = 0;
    CHECK(warp_total_error<0xffffffffu>(&total).empty());
    float want = 0;
    for (float v : small_integers(32)) want += v;
    CHECK(total == want);
    const std::string half = warp_total_error<0x0000ffffu>(&total);
    CHECK(half.find("does not include the calling lane") != std::string::npos);
    const std::string no_lane0 = warp_total_error<0xfffffffeu>(&total);
    CHECK(no_lane0.find("does not include the calling lane 0") != std::string::npos);
}

TEST_CASE("mutation: compute that does not wait for the copy stream's event reads the buffer before the copy") {
    CHECK(copy_then_compute_right(true));
    if (!kUnderTsan) CHECK_FALSE(copy_then_compute_right(false));
}

TEST_CASE("mutation: a pinned buffer refilled before its asynchronous copy finished uploads the new contents") {
    CHECK(pinned_reuse_right(true));
    if (!kUnderTsan) CHECK_FALSE(pinned_reuse_right(false));
}

// The ASan build of tests/cudaemu/oob_probe.cpp: each out-of-bounds access must stop it with
// AddressSanitizer's report of that kind.
TEST_CASE("mutation: out-of-bounds shared and device accesses in kernels are reported by ASan") {
    const char* probe = std::getenv("CUDAEMU_OOB_PROBE");
    if (!probe) {
        MESSAGE("CUDAEMU_OOB_PROBE not set: the ASan probe is not built in this configuration");
        return;
    }
    const std::pair<const char*, const char*> cases[] = {
        {"none", ""},
        {"static_shared", "global-buffer-overflow"},
        {"dynamic_shared", "heap-buffer-overflow"},
        {"device", "heap-buffer-overflow"},
    };
    for (const auto& [what, report] : cases) {
        CAPTURE(what);
        const std::string cmd = std::string(probe) + " " + what + " 2>&1";
        FILE* f = popen(cmd.c_str(), "r");
        REQUIRE(f);
        std::string out;
        char buf[4096];
        while (size_t got = fread(buf, 1, sizeof buf, f)) out.append(buf, got);
        const int status = pclose(f);
        if (*report == 0) {
            CHECK(status == 0);
            CHECK(out.find("probe ok") != std::string::npos);
        } else {
            CHECK(status != 0);
            CHECK(out.find(std::string("AddressSanitizer: ") + report) != std::string::npos);
            CHECK(out.find(std::string(what) + "_kernel") != std::string::npos);  // in the report's stack
        }
    }
}
