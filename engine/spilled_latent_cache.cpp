#include "engine/spilled_latent_cache.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>

#include "core/error.hpp"
#include "engine/background_segment_io.hpp"
#include "engine/reader_segment_io.hpp"

namespace sluice {

namespace {

constexpr uint64_t kPage = 4096;
uint64_t round_up(uint64_t x) { return (x + kPage - 1) / kPage * kPage; }
uint64_t round_down(uint64_t x) { return x / kPage * kPage; }

ModelLayout first_layers(ModelLayout layout, int n) {
    layout.n_layers = n;
    return layout;
}

}  // namespace

uint64_t SpilledLatentCache::slot_bytes(const ModelLayout& d, int64_t capacity) {
    return round_up(uint64_t(capacity) * uint64_t(d.kv_rank) * 4) + round_up(uint64_t(capacity) * uint64_t(d.rope_dim) * 4);
}

SpilledLatentCache::SpilledLatentCache(const ModelLayout& layout, int n_sequences, int64_t capacity, Backend& backend,
                                       const SpillOptions& options)
    : layout_(layout), capacity_(capacity), options_(options),
      resident_(first_layers(layout, options.resident_layers), n_sequences, capacity, backend) {
    if (!backend.uses_host_weights())
        fail(ErrorKind::unsupported, "the spilled latent cache streams into host memory; the {} backend needs its own",
             backend.name());
    if (options_.resident_layers < 0 || options_.resident_layers > layout.n_layers)
        fail(ErrorKind::invalid_input, "resident cache layers {} outside [0, {}]", options_.resident_layers, layout.n_layers);
    latent_region_ = round_up(uint64_t(capacity) * uint64_t(layout.kv_rank) * 4);
    region_ = slot_bytes(layout, capacity);
    const int spilled = layout.n_layers - options_.resident_layers;
    if (options_.buffer_bytes < 2 * region_)
        fail(ErrorKind::invalid_input,
             "the spill buffer of {} bytes holds fewer than two caches of {} positions ({} bytes each)",
             options_.buffer_bytes, capacity, region_);
    fd_ = ::open(options_.path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0600);
    if (fd_ < 0 && errno == EINVAL) fd_ = ::open(options_.path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) fail(ErrorKind::io, "{}: cannot create the spill file: {}", options_.path, std::strerror(errno));
    try {
        // Sparse: disk is used as caches are written.
        if (::ftruncate(fd_, off_t(uint64_t(n_sequences) * uint64_t(spilled) * region_)) != 0)
            fail(ErrorKind::io, "{}: cannot size the spill file: {}", options_.path, std::strerror(errno));
        reader_ = std::make_unique<ReaderSegmentIo>(FileSet{{options_.path}}, options_.reader);
    } catch (...) {
        ::close(fd_);
        ::unlink(options_.path.c_str());
        throw;
    }
    // Both descriptors are open: the name goes now, so a process killed with SIGKILL leaves no
    // spill file behind (each held what the job had written: up to the whole spilled cache).
    ::unlink(options_.path.c_str());
    try {
        const size_t max_reads = size_t(options_.buffer_bytes / kPage / 2) + 1;
        background_ = std::make_unique<BackgroundSegmentIo>(*reader_, std::min<size_t>(max_reads, 4096));
        buffer_.allocate(options_.buffer_bytes, kPage, true);
        schedule_.reserve(size_t(n_sequences) * size_t(std::max(spilled, 0)));
        extents_.resize(2);
        try {
            writer_ = std::thread([this] { writer_loop(); });
        } catch (const std::system_error& e) {
            fail(ErrorKind::out_of_memory, "the spilled latent cache cannot start its writer thread: {}", e.what());
        }
    } catch (...) {
        ::close(fd_);
        throw;
    }
}

SpilledLatentCache::~SpilledLatentCache() {
    // The writer stops after the write it is doing (what is not written yet is not needed: the
    // file goes with this cache).
    {
        std::lock_guard lock(write_mutex_);
        stop_ = true;
    }
    write_cv_.notify_all();
    if (writer_.joinable()) writer_.join();
    // Reads still in flight land before the reader and the buffer go.
    for (size_t i = next_acquire_; i < next_read_; ++i)
        if (!schedule_[i].landed && schedule_[i].ticket) {
            try {
                background_->wait(schedule_[i].ticket);
            } catch (const std::exception&) {
            }
        }
    background_.reset();
    reader_.reset();
    if (fd_ >= 0) ::close(fd_);
}

uint64_t SpilledLatentCache::file_offset(int layer, int sequence) const {
    const int spilled = layout_.n_layers - options_.resident_layers;
    return (uint64_t(sequence) * uint64_t(spilled) + uint64_t(layer - options_.resident_layers)) * region_;
}

void SpilledLatentCache::begin_step(std::span<const LatentCacheUse> uses) {
    if (next_release_ != schedule_.size()) fail(ErrorKind::internal, "spilled cache: a step began before the last ended");
    drain_writes();  // this step reads what the last one wrote
    schedule_.clear();
    next_acquire_ = next_read_ = next_release_ = 0;
    {
        std::lock_guard lock(write_mutex_);
        released_ = 0;
        written_.store(0, std::memory_order_release);
    }
    head_ = 0;
    for (int l = options_.resident_layers; l < layout_.n_layers; ++l)
        for (const auto& u : uses) {
            Pending p;
            p.layer = l;
            p.sequence = u.sequence;
            p.first_new = u.first_new;
            p.positions = u.positions;
            p.latent_bytes = round_up(uint64_t(u.positions) * uint64_t(layout_.kv_rank) * 4);
            p.rope_bytes = round_up(uint64_t(u.positions) * uint64_t(layout_.rope_dim) * 4);
            schedule_.push_back(p);
        }
    issue_reads();
}

// Buffer space in first-in first-out order: live entries are schedule_[written, next_read_),
// laid out from the oldest's offset onwards, wrapping to 0 once.
bool SpilledLatentCache::allocate(uint64_t bytes, uint64_t& offset) {
    const uint64_t size = options_.buffer_bytes;
    // Live: read or being read, in use, or released and not yet written back.
    const size_t oldest = std::min(written_.load(std::memory_order_acquire), next_release_);
    if (oldest == next_read_) {
        offset = 0;
        head_ = bytes;
        return bytes <= size;
    }
    const uint64_t tail = schedule_[oldest].offset;
    if (head_ > tail) {  // live [tail, head): room after head, else before tail
        if (size - head_ >= bytes) offset = head_;
        else if (tail >= bytes) offset = 0;
        else return false;
    } else {  // wrapped: live [tail, size) + [0, head): room in [head, tail)
        if (tail - head_ < bytes) return false;
        offset = head_;
    }
    head_ = offset + bytes;
    return true;
}

void SpilledLatentCache::issue_reads() {
    while (next_read_ < schedule_.size()) {
        Pending& p = schedule_[next_read_];
        if (!allocate(p.latent_bytes + p.rope_bytes, p.offset)) return;
        std::byte* dst = buffer_.data() + p.offset;
        if (p.first_new == 0) {
            // A sequence's first step: nothing on disk yet, the forward fills the buffer.
            p.extent_data[0] = dst;
            p.extent_data[1] = dst + p.latent_bytes;
            p.landed = true;
        } else {
            const uint64_t at = file_offset(p.layer, p.sequence);
            extents_[0] = {0, at, p.latent_bytes};
            extents_[1] = {0, at + latent_region_, p.rope_bytes};
            p.ticket = background_->submit(extents_, dst, size_t(p.latent_bytes + p.rope_bytes), p.extent_data);
            bytes_read_ += p.latent_bytes + p.rope_bytes;
        }
        ++next_read_;
    }
}

LatentCacheEntry SpilledLatentCache::acquire(int layer, int sequence) {
    if (layer < options_.resident_layers) return resident_.acquire(layer, sequence);
    if (next_acquire_ >= schedule_.size() || schedule_[next_acquire_].layer != layer ||
        schedule_[next_acquire_].sequence != sequence)
        fail(ErrorKind::internal, "spilled cache: layer {} sequence {} asked for out of the step's order", layer, sequence);
    Pending& p = schedule_[next_acquire_++];
    throw_if_write_failed();
    issue_reads();
    // No room until released caches are written back: wait for the writer, not the disk's reads.
    while (next_acquire_ > next_read_ && written_.load(std::memory_order_acquire) < next_release_) {
        wait_for_writes(written_.load());
        throw_if_write_failed();
        issue_reads();
    }
    if (next_acquire_ > next_read_) fail(ErrorKind::internal, "spilled cache: the buffer cannot hold the cache asked for");
    if (!p.landed) {
        const auto t0 = std::chrono::steady_clock::now();
        background_->wait(p.ticket);
        read_wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        p.landed = true;
    }
    return {reinterpret_cast<float*>(const_cast<std::byte*>(p.extent_data[0])),
            reinterpret_cast<float*>(const_cast<std::byte*>(p.extent_data[1]))};
}

void SpilledLatentCache::release(int layer, int sequence) {
    if (layer < options_.resident_layers) return;
    if (next_release_ >= next_acquire_ || schedule_[next_release_].layer != layer ||
        schedule_[next_release_].sequence != sequence)
        fail(ErrorKind::internal, "spilled cache: layer {} sequence {} released out of order", layer, sequence);
    throw_if_write_failed();
    ++next_release_;
    {
        std::lock_guard lock(write_mutex_);
        released_ = next_release_;
    }
    write_cv_.notify_one();
    issue_reads();
}

// The whole pages that hold the step's new positions, latents and roped keys.
void SpilledLatentCache::write_back(const Pending& p) {
    const uint64_t at = file_offset(p.layer, p.sequence);
    auto write_range = [&](const std::byte* base, uint64_t row_bytes, uint64_t limit, uint64_t file_at) {
        const uint64_t lo = round_down(uint64_t(p.first_new) * row_bytes);
        const uint64_t hi = std::min(round_up(uint64_t(p.positions) * row_bytes), limit);
        for (uint64_t done = lo; done < hi;) {
            const ssize_t n = ::pwrite(fd_, base + done, size_t(hi - done), off_t(file_at + done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) fail(ErrorKind::io, "{}: spill write of {} bytes at {} failed: {}", options_.path, hi - done,
                             file_at + done, n < 0 ? std::strerror(errno) : "nothing written");
            done += uint64_t(n);
        }
        bytes_written_.fetch_add(hi - lo, std::memory_order_relaxed);
    };
    write_range(p.extent_data[0], uint64_t(layout_.kv_rank) * 4, p.latent_bytes, at);
    write_range(p.extent_data[1], uint64_t(layout_.rope_dim) * 4, p.rope_bytes, at + latent_region_);
}

void SpilledLatentCache::writer_loop() {
    for (;;) {
        size_t index;
        {
            std::unique_lock lock(write_mutex_);
            write_cv_.wait(lock, [&] { return stop_ || written_.load(std::memory_order_relaxed) < released_; });
            if (stop_) return;
            index = written_.load(std::memory_order_relaxed);
        }
        try {
            write_back(schedule_[index]);
        } catch (const std::exception& e) {
            {
                std::lock_guard lock(write_mutex_);
                write_error_ = e.what();
                write_failed_.store(true);
            }
            written_cv_.notify_all();
            return;
        }
        {
            std::lock_guard lock(write_mutex_);
            written_.store(index + 1, std::memory_order_release);
        }
        written_cv_.notify_all();
    }
}

void SpilledLatentCache::wait_for_writes(size_t written) {
    const auto t0 = std::chrono::steady_clock::now();
    {
        std::unique_lock lock(write_mutex_);
        written_cv_.wait(lock, [&] {
            return write_failed_.load() || written_.load(std::memory_order_relaxed) > written ||
                   written_.load(std::memory_order_relaxed) >= released_;
        });
    }
    write_wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void SpilledLatentCache::drain_writes() {
    while (written_.load(std::memory_order_acquire) < next_release_ && !write_failed_.load()) wait_for_writes(written_.load());
    throw_if_write_failed();
}

void SpilledLatentCache::throw_if_write_failed() {
    if (!write_failed_.load()) return;
    std::lock_guard lock(write_mutex_);
    fail(ErrorKind::io, "{}", write_error_);
}

void SpilledLatentCache::end_step() {
    drain_writes();
    if (next_release_ != schedule_.size())
        fail(ErrorKind::internal, "spilled cache: {} of {} caches released at the end of the step", next_release_,
             schedule_.size());
}

}  // namespace sluice
