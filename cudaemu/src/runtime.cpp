// cudaemu: device queries (one emulated sm_89 device that says it is emulated), error codes and
// their names, the sticky device error, kernel launch checks, and the emulator's own controls.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda_runtime.h"
#include "cudaemu/cudaemu.hpp"
#include "device_state.hpp"

namespace cudaemu::detail {

namespace {

thread_local cudaError_t last_error = cudaSuccess;

constexpr int kSms = 128;  // an RTX 4090's
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kSharedPerBlock = 48 << 10;         // without cudaFuncSetAttribute
constexpr int kSharedPerBlockOptin = 99 << 10;    // sm_89's opt-in maximum

size_t parse_bytes(const char* s, size_t fallback) {
    if (!s || !*s) return fallback;
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    double scale = 1;
    switch (std::toupper(static_cast<unsigned char>(*end))) {
        case 'K': scale = 1024.0; break;
        case 'M': scale = 1024.0 * 1024; break;
        case 'G': scale = 1024.0 * 1024 * 1024; break;
        case 'T': scale = 1024.0 * 1024 * 1024 * 1024; break;
        default: break;
    }
    return v > 0 ? size_t(v * scale) : fallback;
}

double parse_double(const char* s, double fallback) { return s && *s ? std::strtod(s, nullptr) : fallback; }

}  // namespace

Config config_from_environment() {
    Config c;
    if (const char* o = std::getenv("CUDAEMU_ORDER")) {
        const std::string v = o;
        if (v == "forward") c.schedule.order = Order::forward;
        else if (v == "reverse") c.schedule.order = Order::reverse;
        else if (v == "random") c.schedule.order = Order::random;
        else std::fprintf(stderr, "cudaemu: CUDAEMU_ORDER=%s is not random, forward or reverse; using random\n", o);
    }
    if (const char* s = std::getenv("CUDAEMU_SEED")) c.schedule.seed = std::strtoull(s, nullptr, 0);
    c.device_bytes = parse_bytes(std::getenv("CUDAEMU_DEVICE_BYTES"), c.device_bytes);
    c.copies.gb_per_s = parse_double(std::getenv("CUDAEMU_COPY_GBPS"), 0);
    c.copies.latency_us = parse_double(std::getenv("CUDAEMU_COPY_LATENCY_US"), 0);
    c.copies.jitter_us = parse_double(std::getenv("CUDAEMU_JITTER_US"), 0);
    if (const char* p = std::getenv("CUDAEMU_POISON")) c.poison = std::strcmp(p, "0") != 0;
    return c;
}

void device_fault(cudaError_t code, const std::string& message) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    std::fprintf(stderr, "cudaemu: %s: %s\n", cudaGetErrorName(code), message.c_str());
    if (d.sticky == cudaSuccess) {
        d.sticky = code;
        d.sticky_message = message;
    }
    d.progress.notify_all();
}

cudaError_t api_error(cudaError_t code, const std::string& message) {
    last_error = code;
    if (!message.empty()) std::fprintf(stderr, "cudaemu: %s: %s\n", cudaGetErrorName(code), message.c_str());
    return code;
}

cudaError_t sticky_error() {
    Device& d = device();
    std::lock_guard lock(d.mu);
    return d.sticky;
}

cudaError_t launch_kernel(std::unique_ptr<KernelCall> call, const void* func, dim3 grid, dim3 block,
                          size_t dynamic_shared_bytes, cudaStream_t stream, const char* signature) {
    if (auto e = sticky_error()) return e;
    // The kernel's parameter types, from "cudaError_t cudaLaunchKernel(...) [with P = {...}]".
    std::string name = signature;
    if (auto at = name.find("[with P = "); at != std::string::npos) name = "kernel(" + name.substr(at + 10);
    if (!name.empty() && name.back() == ']') name.pop_back();
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
        return api_error(cudaErrorInvalidConfiguration,
                         "launch of " + name + " with grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) +
                             "," + std::to_string(grid.z) + ") block (" + std::to_string(block.x) + "," +
                             std::to_string(block.y) + "," + std::to_string(block.z) + ")");
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto it = d.max_dynamic_shared.find(func);
    const size_t limit = it == d.max_dynamic_shared.end() ? kSharedPerBlock : size_t(it->second);
    if (dynamic_shared_bytes > limit)
        return api_error(cudaErrorInvalidValue, "launch of " + name + " with " + std::to_string(dynamic_shared_bytes) +
                                                    " bytes of dynamic shared memory, more than the " +
                                                    std::to_string(limit) + " allowed");
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle, "launch of " + name + " on an unknown stream");
    const uint64_t id = ++d.launches;
    std::shared_ptr<KernelCall> shared_call(std::move(call));
    Op op;
    op.body = [shared_call, grid, block, dynamic_shared_bytes, name, id] {
        run_grid(*shared_call, grid, block, dynamic_shared_bytes, name, id);
    };
    enqueue(*s, std::move(op));
    return cudaSuccess;
}

}  // namespace cudaemu::detail

using namespace cudaemu::detail;

namespace cudaemu {

const char* order_name(Order order) {
    switch (order) {
        case Order::random: return "random";
        case Order::forward: return "forward";
        case Order::reverse: return "reverse";
    }
    return "?";
}

Schedule schedule() {
    Device& d = device();
    std::lock_guard lock(d.mu);
    return d.config.schedule;
}

void set_schedule(Schedule s) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    d.config.schedule = s;
}

CopyModel copy_model() {
    Device& d = device();
    std::lock_guard lock(d.mu);
    return d.config.copies;
}

void set_copy_model(CopyModel model) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    d.config.copies = model;
}

DeviceMemory device_memory() {
    Device& d = device();
    std::lock_guard lock(d.mu);
    size_t pinned = 0;
    for (const auto& [base, range] : d.pinned) pinned += range.bytes;
    return {d.config.device_bytes, d.current_bytes, d.peak_bytes, d.allocations.size(), pinned};
}

size_t copies_reading(const void* host, size_t bytes) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    const auto a = reinterpret_cast<uintptr_t>(host);
    size_t n = 0;
    for (const auto& [id, range] : d.host_reads) n += range.first < a + bytes && a < range.first + range.second;
    return n;
}

HostWaits host_waits() {
    Device& d = device();
    std::lock_guard lock(d.mu);
    return d.waits;
}

void inject_fault(uint64_t n) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    d.fault_countdown = n;
}

void reset_peak_device_memory() {
    Device& d = device();
    std::lock_guard lock(d.mu);
    d.peak_bytes = d.current_bytes;
}

void set_device_bytes(size_t bytes) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    d.config.device_bytes = bytes;
}

std::string take_error() {
    Device& d = device();
    std::unique_lock lock(d.mu);
    synchronize_all(lock);
    std::string m = d.sticky ? std::string(cudaGetErrorName(d.sticky)) + ": " + d.sticky_message : "";
    d.sticky = cudaSuccess;
    d.sticky_message.clear();
    last_error = cudaSuccess;
    return m;
}

}  // namespace cudaemu

extern "C" {

const char* cudaGetErrorName(cudaError_t error) {
    switch (error) {
#define CUDAEMU_NAME(e) \
    case e: return #e;
        CUDAEMU_NAME(cudaSuccess)
        CUDAEMU_NAME(cudaErrorInvalidValue)
        CUDAEMU_NAME(cudaErrorMemoryAllocation)
        CUDAEMU_NAME(cudaErrorInitializationError)
        CUDAEMU_NAME(cudaErrorInvalidConfiguration)
        CUDAEMU_NAME(cudaErrorInvalidPitchValue)
        CUDAEMU_NAME(cudaErrorInvalidSymbol)
        CUDAEMU_NAME(cudaErrorInvalidDevicePointer)
        CUDAEMU_NAME(cudaErrorInvalidMemcpyDirection)
        CUDAEMU_NAME(cudaErrorInsufficientDriver)
        CUDAEMU_NAME(cudaErrorInvalidDeviceFunction)
        CUDAEMU_NAME(cudaErrorNoDevice)
        CUDAEMU_NAME(cudaErrorInvalidDevice)
        CUDAEMU_NAME(cudaErrorInvalidResourceHandle)
        CUDAEMU_NAME(cudaErrorNotReady)
        CUDAEMU_NAME(cudaErrorIllegalAddress)
        CUDAEMU_NAME(cudaErrorLaunchOutOfResources)
        CUDAEMU_NAME(cudaErrorLaunchTimeout)
        CUDAEMU_NAME(cudaErrorAssert)
        CUDAEMU_NAME(cudaErrorHostMemoryAlreadyRegistered)
        CUDAEMU_NAME(cudaErrorHostMemoryNotRegistered)
        CUDAEMU_NAME(cudaErrorIllegalInstruction)
        CUDAEMU_NAME(cudaErrorMisalignedAddress)
        CUDAEMU_NAME(cudaErrorLaunchFailure)
        CUDAEMU_NAME(cudaErrorNotPermitted)
        CUDAEMU_NAME(cudaErrorNotSupported)
        CUDAEMU_NAME(cudaErrorUnknown)
#undef CUDAEMU_NAME
    }
    return "cudaErrorUnrecognized";
}

const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorNotReady: return "device not ready";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorMisalignedAddress: return "misaligned address";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
        case cudaErrorHostMemoryAlreadyRegistered: return "part or all of the requested memory range is already mapped";
        case cudaErrorHostMemoryNotRegistered: return "pointer does not correspond to a registered memory region";
        default: return cudaGetErrorName(error);
    }
}

cudaError_t cudaGetLastError(void) {
    const cudaError_t s = sticky_error();
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    return s ? s : e;
}

cudaError_t cudaPeekAtLastError(void) {
    const cudaError_t s = sticky_error();
    return s ? s : last_error;
}

cudaError_t cudaGetDeviceCount(int* count) {
    if (!count) return api_error(cudaErrorInvalidValue);
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int* dev) {
    if (!dev) return api_error(cudaErrorInvalidValue);
    *dev = 0;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int dev) { return dev == 0 ? cudaSuccess : api_error(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
    if (!p) return api_error(cudaErrorInvalidValue);
    if (dev != 0) return api_error(cudaErrorInvalidDevice);
    *p = cudaDeviceProp{};
    std::snprintf(p->name, sizeof p->name, "cudaemu (emulated CUDA device on the CPU)");
    Device& d = device();
    {
        std::lock_guard lock(d.mu);
        p->totalGlobalMem = d.config.device_bytes;
    }
    p->sharedMemPerBlock = kSharedPerBlock;
    p->sharedMemPerBlockOptin = kSharedPerBlockOptin;
    p->sharedMemPerMultiprocessor = 100 << 10;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = kMaxThreadsPerBlock;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->totalConstMem = 64 << 10;
    p->major = 8;
    p->minor = 9;
    p->multiProcessorCount = kSms;
    p->l2CacheSize = 72 << 20;
    p->maxThreadsPerMultiProcessor = 1536;
    p->concurrentKernels = 1;
    p->asyncEngineCount = 2;
    p->unifiedAddressing = 1;
    p->memoryBusWidth = 384;
    p->canMapHostMemory = 0;
    p->integrated = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
    if (!value) return api_error(cudaErrorInvalidValue);
    if (dev != 0) return api_error(cudaErrorInvalidDevice);
    switch (attr) {
        case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreadsPerBlock; break;
        case cudaDevAttrMaxBlockDimX:
        case cudaDevAttrMaxBlockDimY: *value = 1024; break;
        case cudaDevAttrMaxBlockDimZ: *value = 64; break;
        case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
        case cudaDevAttrMaxGridDimY:
        case cudaDevAttrMaxGridDimZ: *value = 65535; break;
        case cudaDevAttrMaxSharedMemoryPerBlock: *value = kSharedPerBlock; break;
        case cudaDevAttrWarpSize: *value = 32; break;
        case cudaDevAttrClockRate: *value = 2520000; break;
        case cudaDevAttrMultiProcessorCount: *value = kSms; break;
        case cudaDevAttrL2CacheSize: *value = 72 << 20; break;
        case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 1536; break;
        case cudaDevAttrComputeCapabilityMajor: *value = 8; break;
        case cudaDevAttrComputeCapabilityMinor: *value = 9; break;
        case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 100 << 10; break;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kSharedPerBlockOptin; break;
        default: return api_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute " + std::to_string(int(attr)) + " is not modelled");
    }
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
    if (!version) return api_error(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) { return cudaRuntimeGetVersion(version); }

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
    if (!func) return api_error(cudaErrorInvalidDeviceFunction);
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;  // carve-out: a hint
    if (value < 0 || value > kSharedPerBlockOptin) return api_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: dynamic shared memory beyond the device's");
    Device& d = device();
    std::lock_guard lock(d.mu);
    d.max_dynamic_shared[func] = value;
    return cudaSuccess;
}

}  // extern "C"
