#include "io/read_rate.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/error.hpp"

namespace sluice::io {

namespace {
using Clock = std::chrono::steady_clock;
}

ReadRun time_sequential_reads(const std::vector<std::string>& paths, const ReaderOptions& o, StagingRing& ring,
                              double seconds, uint64_t max_bytes, uint64_t start_bytes) {
    const uint64_t bs = o.request_bytes;
    if (ring.n_slots() < o.queue_depth || ring.slot_bytes() < bs)
        fail(ErrorKind::internal, "read timing needs {} slots of {} bytes, the ring has {} of {}", o.queue_depth, bs,
             ring.n_slots(), ring.slot_bytes());
    // The (file, offset, length) blocks in file order.
    std::vector<Extent> blocks;
    for (uint32_t f = 0; f < paths.size(); ++f) {
        std::error_code ec;
        const uint64_t size = std::filesystem::file_size(paths[f], ec);
        if (ec) fail(ErrorKind::io, "{}: {}", paths[f], ec.message());
        for (uint64_t off = 0; off < size; off += bs) blocks.push_back({f, off, std::min(bs, size - off)});
    }
    if (blocks.empty()) fail(ErrorKind::invalid_input, "nothing to read in {} file(s)", paths.size());
    size_t next = 0;
    for (uint64_t skipped = 0; next < blocks.size() && skipped + blocks[next].length <= start_bytes; ++next)
        skipped += blocks[next].length;
    next %= blocks.size();

    SegmentReader reader(FileSet{paths}, o);
    ReadRun run;
    run.backend = reader.backend_name();
    reader.register_buffers(ring.regions());
    const size_t qd = o.queue_depth;
    std::vector<Clock::time_point> started(qd);
    std::vector<const std::byte*> data(qd);
    std::vector<uint64_t> live;
    std::vector<size_t> live_slot, free_slots;
    live.reserve(qd);
    live_slot.reserve(qd);
    for (size_t i = 0; i < qd; ++i) free_slots.push_back(i);
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration<double>(seconds);
    uint64_t submitted = 0;
    for (;;) {
        while (!free_slots.empty() && submitted < max_bytes && Clock::now() < deadline) {
            const size_t s = free_slots.back();
            free_slots.pop_back();
            const Extent& e = blocks[next];
            next = (next + 1) % blocks.size();
            started[s] = Clock::now();
            live.push_back(reader.submit({&e, 1}, ring.regions()[0].data() + s * ring.slot_bytes(), ring.slot_bytes(), &data[s]));
            live_slot.push_back(s);
            submitted += e.length;
        }
        if (live.empty()) break;
        const size_t i = reader.wait_any(live);
        reader.wait(live[i]);  // hands it back (at once: it has completed)
        const size_t s = live_slot[i];
        run.latency_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - started[s]).count());
        live.erase(live.begin() + ptrdiff_t(i));
        live_slot.erase(live_slot.begin() + ptrdiff_t(i));
        free_slots.push_back(s);
    }
    run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    run.bytes = submitted;
    run.gb_per_s = run.seconds > 0 ? double(submitted) / run.seconds / 1e9 : 0;
    return run;
}

}  // namespace sluice::io
