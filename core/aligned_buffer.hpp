// Owned, aligned, zero-initialised host memory: the unit every stage allocates once at start.
// Large buffers are their own mappings, so what a buffer holds from the OS is known exactly
// (held_bytes, which the memory planner counts) and goes back to the OS when it is freed (the heap
// keeps freed blocks, and raises its own mmap threshold to the size of the last one freed: a
// second forward pass of another shape then grew the heap beside the first one's leftovers).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <new>
#include <span>
#include <utility>

namespace sluice {

class AlignedBuffer {
public:
    static constexpr size_t kPageBytes = 4096;
    static constexpr size_t kHugePageBytes = size_t(2) << 20;
    // From this size on (and always with huge pages) a buffer is its own anonymous mapping.
    static constexpr size_t kOwnMappingBytes = size_t(256) << 10;

    // The bytes a buffer of `bytes` holds from the OS once touched: a mapping of whole pages, or
    // with huge_pages of whole 2 MiB pages (transparent huge pages make the last one resident
    // entire: a 2.06 MiB buffer takes 4 MiB), or a heap block rounded to the alignment.
    static constexpr size_t held_bytes(size_t bytes, size_t alignment = 64, bool huge_pages = false) {
        if (huge_pages) return round_up(bytes ? bytes : 1, kHugePageBytes);
        if (bytes >= kOwnMappingBytes) return round_up(bytes, kPageBytes);
        return round_up(bytes ? bytes : 1, alignment);
    }
    static constexpr size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

    AlignedBuffer() = default;
    explicit AlignedBuffer(size_t bytes, size_t alignment = 64, bool huge_pages = false) {
        allocate(bytes, alignment, huge_pages);
    }
    ~AlignedBuffer() { release(); }
    AlignedBuffer(AlignedBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)),
          bytes_(std::exchange(other.bytes_, 0)),
          held_(std::exchange(other.held_, 0)),
          mapped_(std::exchange(other.mapped_, false)) {}
    AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(bytes_, other.bytes_);
        std::swap(held_, other.held_);
        std::swap(mapped_, other.mapped_);
        return *this;
    }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;

    // huge_pages: ask for transparent huge pages before the first touch (large O_DIRECT reads
    // into 4 KiB pages get split into many device segments; DESIGN.md "Facts measured"); the
    // buffer then starts on a 2 MiB boundary. alignment: at most 2 MiB.
    // zero = false leaves the memory untouched: the owner zeroes it with zero_range, from several
    // threads when it is large (the first touch of gigabytes is the slow part of a start).
    void allocate(size_t bytes, size_t alignment = 64, bool huge_pages = false, bool zero = true) {
        release();
        held_ = held_bytes(bytes, alignment, huge_pages);
        mapped_ = huge_pages || bytes >= kOwnMappingBytes;
        if (mapped_) {
            data_ = map_aligned(held_, huge_pages ? kHugePageBytes : std::max(alignment, kPageBytes));
            if (huge_pages) ::madvise(data_, held_, MADV_HUGEPAGE);  // advisory: ignore failure
        } else {
            data_ = static_cast<std::byte*>(std::aligned_alloc(alignment, held_));
            if (!data_) throw std::bad_alloc();
        }
        bytes_ = bytes;
        if (zero) zero_range(0, bytes_);
    }
    void zero_range(size_t begin, size_t end) { std::memset(data_ + begin, 0, end - begin); }

    std::byte* data() { return data_; }
    const std::byte* data() const { return data_; }
    size_t size() const { return bytes_; }
    // What this buffer holds from the OS: held_bytes() of its size (0 when empty).
    size_t held() const { return held_; }
    template <typename T> T* as() { return reinterpret_cast<T*>(data_); }
    template <typename T> const T* as() const { return reinterpret_cast<const T*>(data_); }

private:
    // `length` bytes (a page multiple) starting on an `alignment` boundary: over-map, then trim.
    static std::byte* map_aligned(size_t length, size_t alignment) {
        const size_t span = length + (alignment > kPageBytes ? alignment : 0);
        void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        const auto base = reinterpret_cast<uintptr_t>(p);
        const uintptr_t start = (base + alignment - 1) / alignment * alignment;
        if (start > base) ::munmap(p, start - base);
        if (base + span > start + length) ::munmap(reinterpret_cast<void*>(start + length), base + span - (start + length));
        return reinterpret_cast<std::byte*>(start);
    }
    void release() {
        if (!data_) return;
        if (mapped_) ::munmap(data_, held_);
        else std::free(data_);
        data_ = nullptr;
        bytes_ = held_ = 0;
        mapped_ = false;
    }

    std::byte* data_ = nullptr;
    size_t bytes_ = 0;
    size_t held_ = 0;
    bool mapped_ = false;
};

}  // namespace sluice
