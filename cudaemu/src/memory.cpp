// cudaemu: device memory (host allocations of exactly the requested size, so ASan puts its
// redzone right after the last byte, counted against the configured device size), pinned host
// memory, and copies / memsets whose device side must lie inside one allocation. Copies follow
// CUDA's host-synchronisation rules: cudaMemcpy waits; cudaMemcpyAsync is asynchronous only
// between device memory and pinned host memory (from pageable memory it stages the bytes before
// returning; to pageable memory it waits for the copy).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda_runtime.h"
#include "device_state.hpp"

namespace cudaemu::detail {

namespace {

constexpr size_t kAlignment = 256;  // cudaMalloc's guaranteed alignment

size_t charged(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

std::string hex(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "%p", p);
    return b;
}

enum class Side { device, pinned, pageable };

Side side_of(const void* p, size_t bytes) {
    if (is_device_pointer(p)) return Side::device;
    return pinned_range(p, bytes) ? Side::pinned : Side::pageable;
}

// Checks a copy's direction against where its pointers are and the device ranges against their
// allocations. Call with mu held.
cudaError_t check_copy(const char* api, void* dst, size_t dst_extent, const void* src, size_t src_extent,
                       cudaMemcpyKind kind, Side* dst_side, Side* src_side) {
    *dst_side = side_of(dst, dst_extent);
    *src_side = side_of(src, src_extent);
    const bool dst_dev = *dst_side == Side::device, src_dev = *src_side == Side::device;
    bool ok = true;
    switch (kind) {
        case cudaMemcpyHostToHost: ok = !dst_dev && !src_dev; break;
        case cudaMemcpyHostToDevice: ok = dst_dev && !src_dev; break;
        case cudaMemcpyDeviceToHost: ok = !dst_dev && src_dev; break;
        case cudaMemcpyDeviceToDevice: ok = dst_dev && src_dev; break;
        case cudaMemcpyDefault: break;
        default: return api_error(cudaErrorInvalidMemcpyDirection, std::string(api) + ": unknown cudaMemcpyKind");
    }
    if (!ok)
        return api_error(cudaErrorInvalidValue, std::string(api) + ": direction " + std::to_string(int(kind)) +
                                                    " does not match the pointers (dst " + describe_pointer(dst) +
                                                    ", src " + describe_pointer(src) + ")");
    std::string problem;
    if (dst_dev && !device_range(dst, dst_extent, &problem))
        return api_error(cudaErrorInvalidValue, std::string(api) + ": destination " + problem);
    if (src_dev && !device_range(src, src_extent, &problem))
        return api_error(cudaErrorInvalidValue, std::string(api) + ": source " + problem);
    return cudaSuccess;
}

struct Copy2D {
    void* dst;
    size_t dpitch;
    const void* src;
    size_t spitch, width, height;
    void run() const {
        for (size_t r = 0; r < height; ++r)
            std::memcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
    }
};

cudaError_t copy_2d(const char* api, Copy2D c, cudaMemcpyKind kind, cudaStream_t stream, bool async) {
    if (c.height == 0 || c.width == 0) return cudaSuccess;
    if (c.width > c.dpitch || c.width > c.spitch) return api_error(cudaErrorInvalidPitchValue, std::string(api) + ": width exceeds a pitch");
    if (!c.dst || !c.src) return api_error(cudaErrorInvalidValue, std::string(api) + ": null pointer");
    if (auto e = sticky_error()) return e;
    Device& d = device();
    std::unique_lock lock(d.mu);
    auto s = resolve_stream(async ? stream : cudaStreamLegacy);
    if (!s) return api_error(cudaErrorInvalidResourceHandle, std::string(api) + ": unknown stream");
    Side dst_side, src_side;
    const size_t dst_extent = (c.height - 1) * c.dpitch + c.width, src_extent = (c.height - 1) * c.spitch + c.width;
    if (auto e = check_copy(api, c.dst, dst_extent, c.src, src_extent, kind, &dst_side, &src_side)) return e;
    const bool crosses_bus = (dst_side == Side::device) != (src_side == Side::device);
    Op op;
    op.bus_bytes = crosses_bus ? c.width * c.height : 0;
    if (!async) {
        op.body = [c] { c.run(); };
        host_wait_for(lock, *s, enqueue(*s, std::move(op)));
        return d.sticky;
    }
    if (src_side == Side::pageable && dst_side != Side::pageable) {
        // Staged: the caller may reuse its pageable buffer as soon as this returns.
        host_wait_for(lock, *s, s->enqueued);
        auto staged = std::make_shared<std::vector<char>>(c.width * c.height);
        Copy2D to_stage{staged->data(), c.width, c.src, c.spitch, c.width, c.height};
        to_stage.run();
        Copy2D from_stage{c.dst, c.dpitch, staged->data(), c.width, c.width, c.height};
        op.body = [from_stage, staged] { from_stage.run(); };
        enqueue(*s, std::move(op));
        return cudaSuccess;
    }
    op.body = [c] { c.run(); };
    if (src_side == Side::pinned) {
        // Until the copy completes, its source must not change: copies_reading() tells.
        op.host_read = d.next_host_read++;
        d.host_reads[op.host_read] = {reinterpret_cast<uintptr_t>(c.src), src_extent};
    }
    const uint64_t seq = enqueue(*s, std::move(op));
    if (dst_side == Side::pageable) host_wait_for(lock, *s, seq);
    return cudaSuccess;
}

cudaError_t memset_on(const char* api, void* p, int value, size_t count, cudaStream_t stream) {
    if (count == 0) return cudaSuccess;
    if (auto e = sticky_error()) return e;
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto s = resolve_stream(stream);
    if (!s) return api_error(cudaErrorInvalidResourceHandle, std::string(api) + ": unknown stream");
    std::string problem;
    if (!device_range(p, count, &problem)) return api_error(cudaErrorInvalidValue, std::string(api) + ": " + problem);
    Op op;
    op.body = [p, value, count] { std::memset(p, value, count); };
    enqueue(*s, std::move(op));
    return cudaSuccess;
}

// Host allocation for the pinned and device heaps: exact size, `alignment`-aligned.
void* aligned_bytes(size_t bytes, size_t alignment) {
    void* p = nullptr;
    if (posix_memalign(&p, alignment, std::max<size_t>(bytes, 1)) != 0) return nullptr;
    return p;
}

}  // namespace

bool is_device_pointer(const void* p) {
    Device& d = device();
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = d.allocations.upper_bound(a);
    if (it == d.allocations.begin()) return false;
    --it;
    return a < it->first + std::max<size_t>(it->second, 1);
}

bool device_range(const void* p, size_t bytes, std::string* problem) {
    Device& d = device();
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = d.allocations.upper_bound(a);
    if (it == d.allocations.begin() || a >= std::prev(it)->first + std::max<size_t>(std::prev(it)->second, 1)) {
        if (problem) *problem = hex(p) + " is not in any device allocation";
        return false;
    }
    --it;
    if (a + bytes > it->first + it->second) {
        if (problem)
            *problem = "[" + hex(p) + ", +" + std::to_string(bytes) + ") runs " +
                       std::to_string(a + bytes - (it->first + it->second)) + " bytes past the device allocation of " +
                       std::to_string(it->second) + " bytes at " + hex(reinterpret_cast<void*>(it->first));
        return false;
    }
    return true;
}

bool pinned_range(const void* p, size_t bytes) {
    Device& d = device();
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = d.pinned.upper_bound(a);
    if (it == d.pinned.begin()) return false;
    --it;
    return a + bytes <= it->first + it->second.bytes;
}

std::string describe_pointer(const void* p) {
    if (is_device_pointer(p)) return hex(p) + " (device)";
    if (pinned_range(p, 1)) return hex(p) + " (pinned host)";
    return hex(p) + " (host)";
}

}  // namespace cudaemu::detail

using namespace cudaemu::detail;

extern "C" {

cudaError_t cudaMalloc(void** ptr, size_t size) {
    if (!ptr) return api_error(cudaErrorInvalidValue);
    if (auto e = sticky_error()) return e;
    *ptr = nullptr;
    if (size == 0) return cudaSuccess;
    Device& d = device();
    std::lock_guard lock(d.mu);
    if (d.current_bytes + charged(size) > d.config.device_bytes)
        return api_error(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(size) + " bytes: " +
                                                        std::to_string(d.current_bytes) + " of " +
                                                        std::to_string(d.config.device_bytes) + " device bytes in use");
    void* p = aligned_bytes(size, kAlignment);
    if (!p) return api_error(cudaErrorMemoryAllocation, "cudaMalloc: the host is out of memory");
    if (d.config.poison) std::memset(p, 0xff, size);  // device memory starts as garbage: NaN floats
    d.allocations[reinterpret_cast<uintptr_t>(p)] = size;
    d.current_bytes += charged(size);
    d.peak_bytes = std::max(d.peak_bytes, d.current_bytes);
    *ptr = p;
    return cudaSuccess;
}

// Waits for the whole device first, as CUDA's cudaFree does.
cudaError_t cudaFree(void* ptr) {
    if (!ptr) return cudaSuccess;
    Device& d = device();
    std::unique_lock lock(d.mu);
    auto it = d.allocations.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == d.allocations.end())
        return api_error(cudaErrorInvalidValue, "cudaFree of " + describe_pointer(ptr) + ", not the start of a device allocation");
    synchronize_all(lock);
    it = d.allocations.find(reinterpret_cast<uintptr_t>(ptr));
    d.current_bytes -= charged(it->second);
    d.allocations.erase(it);
    std::free(ptr);
    return d.sticky;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int flags) {
    if (!ptr || (flags & ~0x7u) != 0) return api_error(cudaErrorInvalidValue);
    if (auto e = sticky_error()) return e;
    void* p = aligned_bytes(size, 4096);
    if (!p) return api_error(cudaErrorMemoryAllocation, "cudaHostAlloc: the host is out of memory");
    Device& d = device();
    std::lock_guard lock(d.mu);
    d.pinned[reinterpret_cast<uintptr_t>(p)] = {size, true};
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) { return cudaHostAlloc(ptr, size, cudaHostAllocDefault); }

cudaError_t cudaFreeHost(void* ptr) {
    if (!ptr) return cudaSuccess;
    Device& d = device();
    std::unique_lock lock(d.mu);
    auto it = d.pinned.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == d.pinned.end() || !it->second.allocated)
        return api_error(cudaErrorInvalidValue, "cudaFreeHost of " + describe_pointer(ptr) + ", not from cudaHostAlloc");
    synchronize_all(lock);
    d.pinned.erase(reinterpret_cast<uintptr_t>(ptr));
    std::free(ptr);
    return d.sticky;
}

cudaError_t cudaHostRegister(void* ptr, size_t size, unsigned int flags) {
    if (!ptr || size == 0 || (flags & ~0xfu) != 0) return api_error(cudaErrorInvalidValue);
    if (auto e = sticky_error()) return e;
    Device& d = device();
    std::lock_guard lock(d.mu);
    const auto a = reinterpret_cast<uintptr_t>(ptr);
    auto next = d.pinned.lower_bound(a);
    const bool overlaps_next = next != d.pinned.end() && next->first < a + size;
    const bool overlaps_prev = next != d.pinned.begin() && std::prev(next)->first + std::prev(next)->second.bytes > a;
    if (overlaps_next || overlaps_prev)
        return api_error(cudaErrorHostMemoryAlreadyRegistered, "cudaHostRegister: the range overlaps pinned memory");
    if (is_device_pointer(ptr)) return api_error(cudaErrorInvalidValue, "cudaHostRegister of device memory");
    d.pinned[a] = {size, false};
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void* ptr) {
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto it = d.pinned.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == d.pinned.end() || it->second.allocated)
        return api_error(cudaErrorHostMemoryNotRegistered, "cudaHostUnregister of " + describe_pointer(ptr));
    d.pinned.erase(it);
    return cudaSuccess;
}

// Unified addressing, as on every device sluice targets: pinned host memory is reachable from
// kernels at its host address.
cudaError_t cudaHostGetDevicePointer(void** device_ptr, void* host_ptr, unsigned int flags) {
    if (!device_ptr || flags != 0) return api_error(cudaErrorInvalidValue, "cudaHostGetDevicePointer: bad arguments");
    Device& d = device();
    std::lock_guard lock(d.mu);
    if (!pinned_range(host_ptr, 1))
        return api_error(cudaErrorInvalidValue, "cudaHostGetDevicePointer of " + describe_pointer(host_ptr) + ", not pinned");
    *device_ptr = host_ptr;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
    return copy_2d("cudaMemcpy", {dst, count, src, count, count, 1}, kind, nullptr, false);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
    return copy_2d("cudaMemcpyAsync", {dst, count, src, count, count, 1}, kind, stream, true);
}

cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                         cudaMemcpyKind kind) {
    return copy_2d("cudaMemcpy2D", {dst, dpitch, src, spitch, width, height}, kind, nullptr, false);
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
    return copy_2d("cudaMemcpy2DAsync", {dst, dpitch, src, spitch, width, height}, kind, stream, true);
}

// Asynchronous with respect to the host, on the legacy default stream, as CUDA's is.
cudaError_t cudaMemset(void* ptr, int value, size_t count) { return memset_on("cudaMemset", ptr, value, count, nullptr); }

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
    return memset_on("cudaMemsetAsync", ptr, value, count, stream);
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    if (!free_bytes || !total_bytes) return api_error(cudaErrorInvalidValue);
    Device& d = device();
    std::lock_guard lock(d.mu);
    *total_bytes = d.config.device_bytes;
    *free_bytes = d.config.device_bytes > d.current_bytes ? d.config.device_bytes - d.current_bytes : 0;
    return cudaSuccess;
}

}  // extern "C"
