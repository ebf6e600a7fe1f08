#include "io/segment_reader.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.hpp"
#include "io/pread_completion_source.hpp"
#include "io/uring_completion_source.hpp"

namespace sluice::io {

namespace {
constexpr uint64_t segment_index_bits = 20;
constexpr uint64_t segment_index_mask = (uint64_t(1) << segment_index_bits) - 1;
uint64_t align_down(uint64_t v, uint64_t a) { return v / a * a; }
uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

std::unique_ptr<CompletionSource> make_source(const ReaderOptions& o) {
    const int threads = o.pread_threads > 0 ? o.pread_threads : int(o.queue_depth);
    if (o.backend == Backend::pread) return std::make_unique<PreadCompletionSource>(threads, o.queue_depth);
    int err = 0;
    auto uring = UringCompletionSource::create(o.queue_depth, &err);
    if (uring) return uring;
    if (o.backend == Backend::uring) fail(ErrorKind::io, "io_uring_queue_init: {}", std::strerror(err));
    std::fprintf(stderr, "sluice: io_uring unavailable (%s); reading with a pool of %d pread threads\n",
                 std::strerror(err), threads);
    return std::make_unique<PreadCompletionSource>(threads, o.queue_depth);
}
}  // namespace

Backend parse_backend(const std::string& name) {
    if (name == "auto") return Backend::auto_select;
    if (name == "uring" || name == "io_uring") return Backend::uring;
    if (name == "pread") return Backend::pread;
    fail(ErrorKind::invalid_input, "unknown io backend '{}' (auto, uring, pread)", name);
}

SegmentReader::SegmentReader(const FileSet& files, const ReaderOptions& options)
    : SegmentReader(files, options, nullptr) {}

SegmentReader::SegmentReader(const FileSet& files, const ReaderOptions& options,
                             std::unique_ptr<CompletionSource> source)
    : options_(options) {
    if (options_.request_bytes < block_bytes || options_.request_bytes % block_bytes != 0 ||
        options_.request_bytes > (size_t(1) << 30))
        fail(ErrorKind::invalid_input, "io request size {} is not a multiple of {} bytes up to 1 GiB",
             options_.request_bytes, block_bytes);
    if (options_.queue_depth == 0 || options_.queue_depth > 4096)
        fail(ErrorKind::invalid_input, "io queue depth {} is outside 1..4096", options_.queue_depth);
    open_files(files);
    try {
        // The backend may refuse to start (io_uring forbidden, pread threads refused): the
        // destructor does not run for a constructor that throws, so the files close here.
        source_ = source ? std::move(source) : make_source(options_);
        reaped_.resize(std::max<size_t>(source_->capacity(), 1));
        pending_.resize(64);
        segments_.reserve(64);
        chunks_.reserve(256);
    } catch (...) {
        close_files();
        throw;
    }
}

void SegmentReader::close_files() {
    for (auto& f : files_)
        if (f.fd >= 0) ::close(f.fd);
    files_.clear();
}

SegmentReader::~SegmentReader() {
    // Buffers belong to the caller and reads into them are still running: drain before closing.
    while (in_flight_ > 0) {
        try {
            const size_t n = source_->reap(reaped_, true);
            in_flight_ -= std::min(n, in_flight_);
        } catch (...) {
            break;
        }
    }
    source_.reset();
    close_files();
}

void SegmentReader::open_files(const FileSet& files) {
    bool warned = false;
    files_.reserve(files.paths.size());
    for (const auto& path : files.paths) {
        OpenFile f;
        f.path = path;
        if (options_.direct) {
            f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
            f.direct = f.fd >= 0;
            if (f.fd < 0 && errno == EINVAL) {
                if (!warned)
                    std::fprintf(stderr, "sluice: warning: %s: O_DIRECT refused by the file system; reading through the page cache\n",
                                 path.c_str());
                warned = true;
            } else if (f.fd < 0) {
                const int e = errno;
                close_files();
                fail(ErrorKind::io, "open {}: {}", path, std::strerror(e));
            }
        }
        if (f.fd < 0) f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (f.fd < 0) {
            const int e = errno;
            close_files();
            fail(ErrorKind::io, "open {}: {}", path, std::strerror(e));
        }
        struct stat st {};
        if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(f.fd);
            close_files();
            fail(ErrorKind::invalid_input, "{}: not a regular file", path);
        }
        f.size_bytes = uint64_t(st.st_size);
        files_.push_back(std::move(f));
    }
}

size_t SegmentReader::buffer_bytes_for(std::span<const Extent> extents) {
    size_t total = 0;
    for (const auto& e : extents)
        if (e.length > 0) total += align_up(e.offset + e.length, block_bytes) - align_down(e.offset, block_bytes);
    return total;
}

bool SegmentReader::register_buffers(std::span<const std::span<std::byte>> buffers) {
    registered_.assign(buffers.begin(), buffers.end());
    if (source_->register_buffers(buffers)) return true;
    registered_.clear();
    return false;
}

uint32_t SegmentReader::allocate_segment() {
    if (!free_segments_.empty()) {
        const uint32_t i = free_segments_.back();
        free_segments_.pop_back();
        return i;
    }
    if (segments_.size() > segment_index_mask)
        fail(ErrorKind::internal, "segment reader: more than {} segments outstanding", segment_index_mask);
    segments_.emplace_back();
    return uint32_t(segments_.size() - 1);
}

uint32_t SegmentReader::allocate_chunk() {
    if (!free_chunks_.empty()) {
        const uint32_t i = free_chunks_.back();
        free_chunks_.pop_back();
        return i;
    }
    chunks_.emplace_back();
    return uint32_t(chunks_.size() - 1);
}

void SegmentReader::push_pending(uint32_t chunk) {
    if (pending_count_ == pending_.size()) {  // grow the ring, keeping order
        std::vector<uint32_t> bigger(pending_.size() * 2);
        for (size_t i = 0; i < pending_count_; ++i) bigger[i] = pending_[(pending_head_ + i) % pending_.size()];
        pending_ = std::move(bigger);
        pending_head_ = 0;
    }
    pending_[(pending_head_ + pending_count_) % pending_.size()] = chunk;
    ++pending_count_;
}

uint64_t SegmentReader::submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                               const std::byte** extent_data) {
    // Validate everything before queuing anything, so a refused submit leaves no reads behind.
    if (reinterpret_cast<uintptr_t>(buffer) % block_bytes != 0)
        fail(ErrorKind::invalid_input, "segment buffer {} is not {}-byte aligned", static_cast<void*>(buffer), block_bytes);
    const size_t needed = buffer_bytes_for(extents);
    if (needed > buffer_bytes)
        fail(ErrorKind::invalid_input, "segment of {} extents needs {} bytes of buffer, got {}", extents.size(), needed,
             buffer_bytes);
    for (const auto& e : extents) {
        if (e.file_index >= files_.size())
            fail(ErrorKind::invalid_input, "extent names file {} of {}", e.file_index, files_.size());
        const auto& f = files_[e.file_index];
        if (e.offset + e.length > f.size_bytes || e.offset + e.length < e.offset)
            fail(ErrorKind::invalid_input, "{}: extent offset {} length {} is past the end of the file ({} bytes)", f.path,
                 e.offset, e.length, f.size_bytes);
    }
    int fixed_index = -1;
    for (size_t i = 0; i < registered_.size(); ++i)
        if (buffer >= registered_[i].data() && buffer + needed <= registered_[i].data() + registered_[i].size())
            fixed_index = int(i);

    const uint32_t seg_index = allocate_segment();
    Segment& seg = segments_[seg_index];
    seg.ticket = (next_ticket_++ << segment_index_bits) | seg_index;
    seg.chunks_left = 0;
    seg.failed = false;
    seg.error.clear();

    size_t position = 0;
    for (size_t i = 0; i < extents.size(); ++i) {
        const auto& e = extents[i];
        if (e.length == 0) {
            extent_data[i] = buffer + position;
            continue;
        }
        const uint64_t begin = align_down(e.offset, block_bytes);
        const uint64_t end = align_up(e.offset + e.length, block_bytes);
        extent_data[i] = buffer + position + (e.offset - begin);
        for (uint64_t at = begin; at < end; at += options_.request_bytes) {
            const uint32_t ci = allocate_chunk();
            Chunk& c = chunks_[ci];
            c.segment = seg_index;
            c.file_index = e.file_index;
            c.offset = at;
            c.end = std::min<uint64_t>(end, at + options_.request_bytes);
            c.needed_end = std::min<uint64_t>(c.end, e.offset + e.length);
            c.dest = buffer + position + (at - begin);
            c.fixed_buffer_index = fixed_index;
            c.retries = 0;
            ++seg.chunks_left;
            push_pending(ci);
        }
        position += end - begin;
    }
    const uint64_t ticket = seg.ticket;
    pump(false);
    return ticket;
}

uint64_t SegmentReader::submit(uint64_t segment_id, std::span<const Extent> extents, StagingSlot& slot) {
    if (extents.size() > slot.extent_data.size())
        fail(ErrorKind::invalid_input, "segment {} has {} extents; a staging slot holds at most {}", segment_id,
             extents.size(), slot.extent_data.size());
    slot.segment_id = segment_id;
    slot.n_extents = extents.size();
    for (size_t i = 0; i < extents.size(); ++i) slot.extent_length[i] = extents[i].length;
    slot.ticket = submit(extents, slot.bytes.data(), slot.bytes.size(), slot.extent_data.data());
    return slot.ticket;
}

void SegmentReader::pump(bool block) {
    // Start queued reads up to the queue depth; chunks of failed segments are dropped unread.
    bool queued = false;
    while (pending_count_ > 0 && in_flight_ < source_->capacity()) {
        const uint32_t ci = pending_[pending_head_];
        pending_head_ = (pending_head_ + 1) % pending_.size();
        --pending_count_;
        Chunk& c = chunks_[ci];
        if (segments_[c.segment].failed) {
            finish_chunk(ci);
            continue;
        }
        const auto& f = files_[c.file_index];
        ReadRequest r;
        r.fd = f.fd;
        r.fixed_buffer_index = c.fixed_buffer_index;
        r.offset = c.offset;
        r.length = uint32_t(c.end - c.offset);
        r.dest = c.dest;
        r.user_data = ci;
        source_->enqueue(r);
        ++in_flight_;
        queued = true;
    }
    if (queued) source_->flush();
    if (in_flight_ == 0) return;
    const size_t n = source_->reap(reaped_, block);
    for (size_t i = 0; i < n; ++i) {
        --in_flight_;
        on_completion(reaped_[i]);
    }
}

void SegmentReader::on_completion(const ReadCompletion& done) {
    const auto ci = uint32_t(done.user_data);
    Chunk& c = chunks_[ci];
    const auto& f = files_[c.file_index];
    if (done.result == -EAGAIN || done.result == -EINTR) {
        if (++c.retries > options_.max_retries)
            return fail_chunk(ci, fmt::format("read {} offset {} length {}: {} (after {} retries)", f.path, c.offset,
                                              c.end - c.offset, std::strerror(int(-done.result)), options_.max_retries));
        return push_pending(ci);
    }
    if (done.result < 0)
        return fail_chunk(ci, fmt::format("read {} offset {} length {}: {}", f.path, c.offset, c.end - c.offset,
                                          std::strerror(int(-done.result))));
    const auto got = uint64_t(done.result);
    if (c.offset + got >= c.needed_end) return finish_chunk(ci);  // the rest (if any) lies past EOF
    if (got == 0)
        return fail_chunk(ci, fmt::format("read {} offset {} length {}: unexpected end of file (file shrank to {} bytes?)",
                                          f.path, c.offset, c.end - c.offset, c.offset));
    // Short read: resume after what landed; O_DIRECT needs the resumed offset block-aligned,
    // so re-read the partial block.
    const uint64_t advance = f.direct ? align_down(got, block_bytes) : got;
    if (advance == 0 && ++c.retries > options_.max_retries)
        return fail_chunk(ci, fmt::format("read {} offset {} length {}: no progress after {} short reads", f.path,
                                          c.offset, c.end - c.offset, options_.max_retries));
    c.offset += advance;
    c.dest += advance;
    push_pending(ci);
}

void SegmentReader::fail_chunk(uint32_t chunk_index, const std::string& why) {
    Segment& s = segments_[chunks_[chunk_index].segment];
    if (!s.failed) {
        s.failed = true;
        s.error = why;
    }
    finish_chunk(chunk_index);
}

void SegmentReader::finish_chunk(uint32_t chunk_index) {
    --segments_[chunks_[chunk_index].segment].chunks_left;
    free_chunks_.push_back(chunk_index);
}

SegmentReader::Segment& SegmentReader::segment_for(uint64_t ticket) {
    const uint64_t index = ticket & segment_index_mask;
    if (index >= segments_.size() || segments_[index].ticket != ticket || ticket == 0)
        fail(ErrorKind::internal, "segment reader: unknown or already collected ticket {}", ticket);
    return segments_[index];
}

bool SegmentReader::collect(uint64_t ticket) {
    Segment& s = segment_for(ticket);
    if (s.chunks_left > 0) return false;
    const uint32_t index = uint32_t(ticket & segment_index_mask);
    s.ticket = 0;
    free_segments_.push_back(index);
    if (s.failed) throw Error(ErrorKind::io, s.error);
    return true;
}

bool SegmentReader::poll(uint64_t ticket) {
    segment_for(ticket);
    pump(false);
    return collect(ticket);
}

void SegmentReader::wait(uint64_t ticket) {
    while (segment_for(ticket).chunks_left > 0) pump(true);
    collect(ticket);
}

size_t SegmentReader::wait_any(std::span<const uint64_t> tickets) {
    for (;;) {
        for (size_t i = 0; i < tickets.size(); ++i)
            if (segment_for(tickets[i]).chunks_left == 0) return i;
        pump(true);
    }
}

}  // namespace sluice::io
