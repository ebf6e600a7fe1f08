#include "io/staging_ring.hpp"

#include <sys/mman.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.hpp"
#include "kernels/cuda/device.hpp"

namespace sluice::io {

StagingRing::StagingRing(size_t n_slots, size_t slot_bytes, size_t max_extents_per_slot)
    : slot_bytes_(AlignedBuffer::round_up(slot_bytes, AlignedBuffer::kPageBytes)), max_extents_(max_extents_per_slot) {
    if (n_slots == 0 || slot_bytes == 0) fail(ErrorKind::invalid_input, "staging ring: {} slots of {} bytes", n_slots, slot_bytes);
    // One huge-page mapping, slots end to end in it (2 MiB aligned: see AlignedBuffer).
    memory_.allocate(n_slots * slot_bytes_, AlignedBuffer::kHugePageBytes, true, false);
    const size_t total = memory_.held();
    region_ = {memory_.data(), total};
    // Touch now: first touch of fresh memory is slow (~0.4 GB/s here) and must not be timed.
    memory_.zero_range(0, memory_.size());
    rlimit limit{};
    getrlimit(RLIMIT_MEMLOCK, &limit);
    // Try even above the limit: a process with CAP_IPC_LOCK (root) may lock past RLIMIT_MEMLOCK.
    memory_locked_ = mlock(memory_.data(), total) == 0;
    if (!memory_locked_)
        std::fprintf(stderr,
                     "sluice: warning: staging ring of %zu MiB not locked in memory (RLIMIT_MEMLOCK %s); "
                     "raise `ulimit -l` so it cannot be swapped or migrated\n",
                     total >> 20, limit.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(limit.rlim_cur).c_str());
    // Pinned for the GPU when CUDA is built and a device exists (cudaHostRegister on this same
    // memory: the device copies read the slots directly); ordinary memory otherwise.
    pinned_ = cuda::pin_host_memory(memory_.data(), total);
    slots_.resize(n_slots);
    for (size_t i = 0; i < n_slots; ++i) {
        auto& s = slots_[i];
        s.index = uint32_t(i);
        s.bytes = {memory_.data() + i * slot_bytes_, slot_bytes_};
        s.extent_data.resize(max_extents_);
        s.extent_length.resize(max_extents_);
    }
}

StagingRing::~StagingRing() {
    if (pinned_) cuda::unpin_host_memory(memory_.data());
}

StagingSlot& StagingRing::acquire() {
    std::unique_lock lock(mutex_);
    released_.wait(lock, [&] { return acquired_count_ - released_count_ < slots_.size(); });
    return slots_[acquired_count_++ % slots_.size()];
}

StagingSlot* StagingRing::try_acquire() {
    std::lock_guard lock(mutex_);
    if (acquired_count_ - released_count_ >= slots_.size()) return nullptr;
    return &slots_[acquired_count_++ % slots_.size()];
}

void StagingRing::release(StagingSlot& slot) {
    {
        std::lock_guard lock(mutex_);
        if (released_count_ == acquired_count_)
            fail(ErrorKind::internal, "staging ring: slot {} released but none is outstanding", slot.index);
        const size_t oldest = released_count_ % slots_.size();
        if (slot.index != oldest)
            fail(ErrorKind::internal, "staging ring: slot {} released out of order (oldest is {})", slot.index, oldest);
        ++released_count_;
    }
    released_.notify_one();
}

size_t StagingRing::outstanding() const {
    std::lock_guard lock(mutex_);
    return size_t(acquired_count_ - released_count_);
}

}  // namespace sluice::io
