// Reads segments (lists of extents across a model's files) into caller-owned buffers or staging
// slots, and reports per-segment completion. Each extent is read rounded out to the 4 KiB block
// (O_DIRECT needs it); the pointer handed back points at the extent's first requested byte.
// Requests are split to `request_bytes` and kept at most `queue_depth` deep. Short reads are
// resubmitted, EAGAIN/EINTR retried, any other error fails only its own segment (the others
// complete) and is thrown, naming file, offset and length, from poll/wait of that ticket.
// One thread drives a reader (submit/poll/wait are not thread-safe).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/completion_source.hpp"
#include "io/extent.hpp"
#include "io/staging_ring.hpp"

namespace sluice::io {

enum class Backend { auto_select, uring, pread };
Backend parse_backend(const std::string& name);  // "auto" | "uring" | "pread"

struct ReaderOptions {
    Backend backend = Backend::auto_select;
    bool direct = true;              // O_DIRECT (falls back to buffered where refused, one warning)
    size_t request_bytes = 1 << 20;  // largest single read; a multiple of 4 KiB
    unsigned queue_depth = 8;        // most reads outstanding
    int pread_threads = 0;           // pread backend threads; 0 = queue_depth
    int max_retries = 32;            // per request, for EAGAIN/EINTR/no-progress short reads
};

class SegmentReader {
public:
    static constexpr size_t block_bytes = 4096;

    SegmentReader(const FileSet& files, const ReaderOptions& options = {});
    // Test seam: reads go through `source` (e.g. a fault injector around a real backend).
    SegmentReader(const FileSet& files, const ReaderOptions& options, std::unique_ptr<CompletionSource> source);
    ~SegmentReader();  // waits for reads still in flight (their buffers are in use)
    SegmentReader(const SegmentReader&) = delete;
    SegmentReader& operator=(const SegmentReader&) = delete;

    const char* backend_name() const { return source_->name(); }
    bool file_is_direct(uint32_t file_index) const { return files_[file_index].direct; }
    uint64_t file_size_bytes(uint32_t file_index) const { return files_[file_index].size_bytes; }
    size_t n_files() const { return files_.size(); }

    // Bytes a buffer needs for these extents (each rounded out to the block).
    static size_t buffer_bytes_for(std::span<const Extent> extents);
    static size_t buffer_alignment() { return block_bytes; }

    // Buffers later submits will land in (enables READ_FIXED on io_uring). Returns false if the
    // kernel refused (reads stay plain).
    bool register_buffers(std::span<const std::span<std::byte>> buffers);

    // Starts reading `extents` into `buffer`; once the ticket completes, extent_data[i] is the
    // address of extent i's first byte. Throws invalid_input (nothing queued) for an extent past
    // its file's end, a bad file index or a buffer too small / misaligned.
    uint64_t submit(std::span<const Extent> extents, std::byte* buffer, size_t buffer_bytes,
                    const std::byte** extent_data);
    // The same into a staging slot (fills slot.segment_id, ticket, extent_data, extent_length).
    uint64_t submit(uint64_t segment_id, std::span<const Extent> extents, StagingSlot& slot);

    // Makes progress without blocking; true once the ticket's bytes have all landed (throws its
    // error if it failed). A ticket reports completion once; then it is forgotten.
    bool poll(uint64_t ticket);
    void wait(uint64_t ticket);
    // The index of a ticket that has completed (landed or failed), still to be handed back by
    // poll or wait (which then return at once): a failed read's error goes to a known ticket.
    size_t wait_any(std::span<const uint64_t> tickets);
    // Reads queued or in flight.
    size_t requests_outstanding() const { return pending_count_ + in_flight_; }

private:
    struct OpenFile {
        std::string path;
        int fd = -1;
        bool direct = false;
        uint64_t size_bytes = 0;
    };
    struct Segment {
        uint64_t ticket = 0;  // 0: free
        uint32_t chunks_left = 0;
        bool failed = false;
        std::string error;
    };
    struct Chunk {
        uint32_t segment = 0;
        uint32_t file_index = 0;
        uint64_t offset = 0;      // next byte to read
        uint64_t end = 0;         // end of the (rounded) range
        uint64_t needed_end = 0;  // bytes past this may be missing (past EOF)
        std::byte* dest = nullptr;
        int fixed_buffer_index = -1;
        int retries = 0;
    };

    void open_files(const FileSet& files);  // all or none: closes what it opened before throwing
    void close_files();
    uint32_t allocate_segment();
    uint32_t allocate_chunk();
    void push_pending(uint32_t chunk);
    void pump(bool block);
    void on_completion(const ReadCompletion& c);
    void finish_chunk(uint32_t chunk_index);
    void fail_chunk(uint32_t chunk_index, const std::string& why);
    Segment& segment_for(uint64_t ticket);
    bool collect(uint64_t ticket);  // true if done (throws on failure)

    ReaderOptions options_;
    std::vector<OpenFile> files_;
    std::unique_ptr<CompletionSource> source_;
    std::vector<std::span<std::byte>> registered_;
    std::vector<Segment> segments_;
    std::vector<uint32_t> free_segments_;
    std::vector<Chunk> chunks_;
    std::vector<uint32_t> free_chunks_;
    std::vector<uint32_t> pending_;  // ring of chunk indices waiting for a queue slot
    size_t pending_head_ = 0;
    size_t pending_count_ = 0;
    size_t in_flight_ = 0;
    uint64_t next_ticket_ = 1;
    std::vector<ReadCompletion> reaped_;
};

}  // namespace sluice::io
