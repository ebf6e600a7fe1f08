// Emulated streams and memory: operations of a stream run in order on its own worker, events
// complete when their stream reaches them, the legacy default stream orders itself against the
// blocking streams, copies follow CUDA's pinned / pageable rules, and device memory is bounded,
// bounds-checked and counted.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "emu_test.hpp"

using namespace emu_test;

namespace {

__global__ void fill_kernel(float* p, int n, float v) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) p[i] = v;
}

__global__ void add_one_kernel(float* p, int n) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) p[i] += 1.0f;
}

// A slow copy: 20 ms per host<->device transfer.
const cudaemu::CopyModel kSlowCopies{0, 20000, 0};

}  // namespace

TEST_CASE("a stream's kernels and copies run in issue order on its worker") {
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    const int n = 1000;
    auto* d = device_array<float>(n);
    launch_kernel(fill_kernel, 4, 256, 0, s, d, n, 2.0f);
    for (int k = 0; k < 5; ++k) launch_kernel(add_one_kernel, 4, 256, 0, s, d, n);
    std::vector<float> host(n);
    REQUIRE(cudaMemcpyAsync(host.data(), d, n * 4, cudaMemcpyDeviceToHost, s) == cudaSuccess);
    // To pageable memory the copy has completed when the call returns.
    CHECK(std::all_of(host.begin(), host.end(), [](float v) { return v == 7.0f; }));
    REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
    cudaFree(d);
}

TEST_CASE("an event completes when its stream reaches it, and a waiting stream stops until then") {
    ScopedCopyModel slow(kSlowCopies);
    cudaStream_t copy, compute;
    REQUIRE(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking) == cudaSuccess);
    cudaEvent_t copied, done;
    REQUIRE(cudaEventCreate(&copied) == cudaSuccess);
    REQUIRE(cudaEventCreate(&done) == cudaSuccess);
    const int n = 512;
    float* pinned = nullptr;
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), n * 4, cudaHostAllocDefault) == cudaSuccess);
    for (int i = 0; i < n; ++i) pinned[i] = float(i);
    auto* d = device_array<float>(n);
    REQUIRE(cudaMemcpyAsync(d, pinned, n * 4, cudaMemcpyHostToDevice, copy) == cudaSuccess);
    REQUIRE(cudaEventRecord(copied, copy) == cudaSuccess);
    CHECK(cudaEventQuery(copied) == cudaErrorNotReady);  // the copy sleeps 20 ms first
    REQUIRE(cudaStreamWaitEvent(compute, copied, 0) == cudaSuccess);
    launch_kernel(add_one_kernel, 2, 256, 0, compute, d, n);
    REQUIRE(cudaEventRecord(done, compute) == cudaSuccess);
    CHECK(cudaStreamQuery(compute) == cudaErrorNotReady);
    REQUIRE(cudaEventSynchronize(done) == cudaSuccess);
    CHECK(cudaEventQuery(copied) == cudaSuccess);
    float ms = -1;
    CHECK(cudaEventElapsedTime(&ms, copied, done) == cudaSuccess);
    CHECK(ms >= 0.0f);
    const auto got = download(d, n);
    for (int i = 0; i < n; ++i) CHECK(got[size_t(i)] == float(i) + 1.0f);
    cudaEventDestroy(copied);
    cudaEventDestroy(done);
    cudaStreamDestroy(copy);
    cudaStreamDestroy(compute);
    cudaFreeHost(pinned);
    cudaFree(d);
}

TEST_CASE("an event created without timing refuses elapsed time") {
    cudaEvent_t a, b;
    REQUIRE(cudaEventCreateWithFlags(&a, cudaEventDisableTiming) == cudaSuccess);
    REQUIRE(cudaEventCreate(&b) == cudaSuccess);
    cudaEventRecord(a, nullptr);
    cudaEventRecord(b, nullptr);
    cudaEventSynchronize(b);
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b) == cudaErrorInvalidResourceHandle);
    cudaGetLastError();
    cudaEventDestroy(a);
    cudaEventDestroy(b);
}

TEST_CASE("the legacy default stream waits for the blocking streams' earlier work") {
    ScopedCopyModel slow({0, 0, 3000});  // every operation up to 3 ms late: the order must not depend on luck
    cudaStream_t blocking;
    REQUIRE(cudaStreamCreate(&blocking) == cudaSuccess);
    const int n = 2048;
    auto* d = device_array<float>(n);
    launch_kernel(fill_kernel, 8, 256, 0, blocking, d, n, 5.0f);
    launch_kernel(add_one_kernel, 8, 256, 0, nullptr, d, n);       // legacy: after the fill
    launch_kernel(add_one_kernel, 8, 256, 0, blocking, d, n);      // blocking: after the legacy add
    std::vector<float> host(n);
    REQUIRE(cudaMemcpy(host.data(), d, n * 4, cudaMemcpyDeviceToHost) == cudaSuccess);  // legacy again
    CHECK(std::all_of(host.begin(), host.end(), [](float v) { return v == 7.0f; }));
    cudaStreamDestroy(blocking);
    cudaFree(d);
}

TEST_CASE("cudaMemcpyAsync from pageable memory stages it: the caller may reuse the buffer at once") {
    ScopedCopyModel slow(kSlowCopies);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    std::vector<float> pageable(256, 1.0f);
    auto* d = device_array<float>(256);
    REQUIRE(cudaMemcpyAsync(d, pageable.data(), 256 * 4, cudaMemcpyHostToDevice, s) == cudaSuccess);
    std::fill(pageable.begin(), pageable.end(), 2.0f);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    const auto got = download(d, 256);
    CHECK(std::all_of(got.begin(), got.end(), [](float v) { return v == 1.0f; }));
    cudaStreamDestroy(s);
    cudaFree(d);
}

TEST_CASE("copies and memsets must stay inside one device allocation") {
    auto* d = device_array<float>(100);
    std::vector<float> host(200);
    CHECK(cudaMemcpy(d, host.data(), 101 * 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(host.data(), d + 50, 51 * 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    CHECK(cudaMemset(d + 1, 0, 100 * 4) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d, host.data(), 100 * 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);  // wrong direction
    CHECK(cudaMemcpy2D(d, 40, host.data(), 40, 40, 11, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy2D(d, 40, host.data(), 40, 40, 10, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaFree(d + 1) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d, host.data(), 100 * 4, cudaMemcpyHostToDevice) == cudaSuccess);
    cudaGetLastError();
    cudaFree(d);
}

TEST_CASE("device memory is bounded by the configured size and counted, with a resettable peak") {
    const auto before = cudaemu::device_memory();
    cudaemu::set_device_bytes(before.current_bytes + (1 << 20));
    cudaemu::reset_peak_device_memory();
    void *a = nullptr, *b = nullptr, *c = nullptr;
    REQUIRE(cudaMalloc(&a, 600 << 10) == cudaSuccess);
    CHECK(cudaMalloc(&b, 600 << 10) == cudaErrorMemoryAllocation);
    CHECK(b == nullptr);
    size_t free_bytes = 0, total = 0;
    REQUIRE(cudaMemGetInfo(&free_bytes, &total) == cudaSuccess);
    CHECK(total == before.current_bytes + (1 << 20));
    CHECK(free_bytes == (1 << 20) - (600 << 10));
    REQUIRE(cudaMalloc(&c, 100) == cudaSuccess);  // counted as 256: the allocation granularity
    auto m = cudaemu::device_memory();
    CHECK(m.current_bytes == before.current_bytes + (600 << 10) + 256);
    cudaFree(a);
    cudaFree(c);
    m = cudaemu::device_memory();
    CHECK(m.current_bytes == before.current_bytes);
    CHECK(m.peak_bytes == before.current_bytes + (600 << 10) + 256);
    cudaemu::reset_peak_device_memory();
    CHECK(cudaemu::device_memory().peak_bytes == before.current_bytes);
    cudaemu::set_device_bytes(before.capacity_bytes);
    cudaGetLastError();
}

TEST_CASE("host registration: overlapping ranges and unknown pointers are refused") {
    std::vector<char> buf(1 << 16);
    REQUIRE(cudaHostRegister(buf.data(), 4096, cudaHostRegisterDefault) == cudaSuccess);
    CHECK(cudaHostRegister(buf.data() + 100, 4096, cudaHostRegisterDefault) == cudaErrorHostMemoryAlreadyRegistered);
    CHECK(cudaHostUnregister(buf.data() + 1) == cudaErrorHostMemoryNotRegistered);
    CHECK(cudaHostUnregister(buf.data()) == cudaSuccess);
    void* pinned = nullptr;
    REQUIRE(cudaHostAlloc(&pinned, 100, cudaHostAllocPortable) == cudaSuccess);
    CHECK(cudaHostUnregister(pinned) == cudaErrorHostMemoryNotRegistered);  // freed by cudaFreeHost instead
    CHECK(cudaFreeHost(buf.data()) == cudaErrorInvalidValue);
    CHECK(cudaFreeHost(pinned) == cudaSuccess);
    cudaGetLastError();
}

TEST_CASE("copies_reading names the pinned host ranges queued copies still read, until each completes") {
    ScopedCopyModel slow(kSlowCopies);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    char* pinned = nullptr;
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), 8192, cudaHostAllocDefault) == cudaSuccess);
    std::vector<char> pageable(4096);
    auto* d = device_array<char>(8192);
    // From pageable memory first: that copy waits for the stream before it stages the bytes.
    REQUIRE(cudaMemcpyAsync(d + 4096, pageable.data(), 4096, cudaMemcpyHostToDevice, s) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(d, pinned + 1024, 1024, cudaMemcpyHostToDevice, s) == cudaSuccess);
    CHECK(cudaemu::copies_reading(pinned + 1024, 1) == 1);
    CHECK(cudaemu::copies_reading(pinned, 1025) == 1);
    CHECK(cudaemu::copies_reading(pinned + 2047, 100) == 1);
    CHECK(cudaemu::copies_reading(pinned, 1024) == 0);      // ends where the copy's source starts
    CHECK(cudaemu::copies_reading(pinned + 2048, 100) == 0);
    CHECK(cudaemu::copies_reading(pageable.data(), 4096) == 0);  // staged: the caller may reuse it
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(cudaemu::copies_reading(pinned, 8192) == 0);
    cudaFree(d);
    CHECK(cudaFreeHost(pinned) == cudaSuccess);
    cudaStreamDestroy(s);
}

TEST_CASE("host_waits counts every time the host waits for the device, and those that found work unfinished") {
    ScopedCopyModel slow(kSlowCopies);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    cudaEvent_t e;
    REQUIRE(cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess);
    float* pinned = nullptr;
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), 1024, cudaHostAllocDefault) == cudaSuccess);
    auto* d = device_array<float>(256);
    const auto w0 = cudaemu::host_waits();
    REQUIRE(cudaMemcpyAsync(d, pinned, 1024, cudaMemcpyHostToDevice, s) == cudaSuccess);  // no wait
    REQUIRE(cudaEventRecord(e, s) == cudaSuccess);
    CHECK(cudaemu::host_waits().calls == w0.calls);
    REQUIRE(cudaEventSynchronize(e) == cudaSuccess);  // the 20 ms copy is still running
    REQUIRE(cudaEventSynchronize(e) == cudaSuccess);  // done by now
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    const auto w1 = cudaemu::host_waits();
    CHECK(w1.calls == w0.calls + 3);
    CHECK(w1.blocked == w0.blocked + 1);
    std::vector<float> pageable(256);
    REQUIRE(cudaMemcpyAsync(pageable.data(), d, 1024, cudaMemcpyDeviceToHost, s) == cudaSuccess);  // to pageable: waits
    CHECK(cudaemu::host_waits().calls == w1.calls + 1);
    cudaFree(d);
    cudaFreeHost(pinned);
    cudaEventDestroy(e);
    cudaStreamDestroy(s);
}

TEST_CASE("inject_fault: the n-th operation fails with a sticky error, later work is skipped, events still complete") {
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    cudaEvent_t e;
    REQUIRE(cudaEventCreate(&e) == cudaSuccess);
    const int n = 256;
    auto* d = device_array<float>(n);
    cudaemu::inject_fault(2);
    launch_kernel(fill_kernel, 1, 256, 0, s, d, n, 1.0f);  // runs
    launch_kernel(add_one_kernel, 1, 256, 0, s, d, n);     // fails
    launch_kernel(add_one_kernel, 1, 256, 0, s, d, n);     // skipped (or refused at launch)
    cudaEventRecord(e, s);
    CHECK(cudaEventSynchronize(e) == cudaErrorLaunchFailure);  // returns: no hang on a faulted device
    CHECK(cudaStreamSynchronize(s) == cudaErrorLaunchFailure);
    const std::string error = cudaemu::take_error();
    CHECK(error.find("injected fault") != std::string::npos);
    cudaGetLastError();
    CHECK(download(d, n) == std::vector<float>(n, 1.0f));
    cudaFree(d);
    cudaEventDestroy(e);
    cudaStreamDestroy(s);
}

TEST_CASE("device_memory counts pinned host memory, allocated or registered") {
    const size_t before = cudaemu::device_memory().pinned_host_bytes;
    void* p = nullptr;
    REQUIRE(cudaHostAlloc(&p, 10000, cudaHostAllocDefault) == cudaSuccess);
    std::vector<char> buf(1 << 16);
    REQUIRE(cudaHostRegister(buf.data(), 4096, cudaHostRegisterDefault) == cudaSuccess);
    CHECK(cudaemu::device_memory().pinned_host_bytes == before + 10000 + 4096);
    REQUIRE(cudaHostUnregister(buf.data()) == cudaSuccess);
    REQUIRE(cudaFreeHost(p) == cudaSuccess);
    CHECK(cudaemu::device_memory().pinned_host_bytes == before);
}
