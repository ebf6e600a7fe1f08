// Owned, aligned, zero-initialised host memory: the unit every stage allocates once at start.
#pragma once

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
    AlignedBuffer() = default;
    explicit AlignedBuffer(size_t bytes, size_t alignment = 64, bool huge_pages = false) {
        allocate(bytes, alignment, huge_pages);
    }
    ~AlignedBuffer() { std::free(data_); }
    AlignedBuffer(AlignedBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
    AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(bytes_, other.bytes_);
        return *this;
    }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;

    // huge_pages: ask for transparent huge pages before the first touch (large O_DIRECT reads
    // into 4 KiB pages get split into many device segments; DESIGN.md "Facts measured").
    // zero = false leaves the memory untouched: the owner zeroes it with zero_range, from several
    // threads when it is large (the first touch of gigabytes is the slow part of a start).
    void allocate(size_t bytes, size_t alignment = 64, bool huge_pages = false, bool zero = true) {
        std::free(data_);
        bytes_ = bytes;
        const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
        data_ = static_cast<std::byte*>(std::aligned_alloc(alignment, rounded ? rounded : alignment));
        if (!data_) throw std::bad_alloc();
        if (huge_pages) ::madvise(data_, rounded, MADV_HUGEPAGE);  // advisory: ignore failure
        if (zero) zero_range(0, bytes_);
    }
    void zero_range(size_t begin, size_t end) { std::memset(data_ + begin, 0, end - begin); }

    std::byte* data() { return data_; }
    const std::byte* data() const { return data_; }
    size_t size() const { return bytes_; }
    template <typename T> T* as() { return reinterpret_cast<T*>(data_); }
    template <typename T> const T* as() const { return reinterpret_cast<const T*>(data_); }

private:
    std::byte* data_ = nullptr;
    size_t bytes_ = 0;
};

}  // namespace sluice
