#include "engine/segment_read_rate.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "engine/reader_segment_io.hpp"

namespace sluice {

SegmentReadRun time_expert_reads(const OpenModel& model, const io::ReaderOptions& options, int in_flight, double seconds) {
    using Clock = std::chrono::steady_clock;
    std::vector<std::vector<Extent>> segments;
    for (const auto& l : model.plan.layers)
        for (const auto& e : l.experts) {
            std::vector<Extent> x;
            for (const auto& t : e.tensors) {
                x.push_back(t.extent);
                if (t.scales.length) x.push_back(t.scales);
            }
            segments.push_back(std::move(x));
        }
    if (segments.empty()) fail(ErrorKind::invalid_input, "{}: no routed experts to time", model.path);
    ReaderSegmentIo io(model.source->files(), options);
    size_t buffer_bytes = 0;
    for (const auto& s : segments) buffer_bytes = std::max(buffer_bytes, io.buffer_bytes_for(s));
    const size_t align = std::max<size_t>(io.buffer_alignment(), size_t(2) << 20);
    buffer_bytes = (buffer_bytes + align - 1) / align * align;
    const int n = std::max(in_flight, 1);
    AlignedBuffer memory(buffer_bytes * size_t(n), align, true);
    std::vector<std::span<std::byte>> regions;
    for (int i = 0; i < n; ++i) regions.emplace_back(memory.data() + size_t(i) * buffer_bytes, buffer_bytes);
    io.register_buffers(regions);

    SegmentReadRun run;
    run.backend = io.backend_name();
    size_t most_extents = 0;
    for (const auto& s : segments) most_extents = std::max(most_extents, s.size());
    // Each read in flight writes its extents' addresses when it lands: one array per slot.
    std::vector<std::vector<const std::byte*>> extent_data(static_cast<size_t>(n), std::vector<const std::byte*>(most_extents));
    std::vector<uint64_t> tickets;
    std::vector<int> slot_of;
    std::vector<int> free_slots;
    for (int i = 0; i < n; ++i) free_slots.push_back(i);
    size_t next = segments.size() / 2;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds);
    for (;;) {
        while (!free_slots.empty() && Clock::now() < deadline) {
            const auto& s = segments[next];
            next = (next + 1) % segments.size();
            const int slot = free_slots.back();
            free_slots.pop_back();
            tickets.push_back(io.submit(s, regions[size_t(slot)].data(), buffer_bytes, extent_data[size_t(slot)].data()));
            slot_of.push_back(slot);
            for (const auto& e : s) run.bytes += e.length;
            ++run.segments;
        }
        if (tickets.empty()) break;
        const size_t done = io.wait_any(tickets);
        io.wait(tickets[done]);  // hands it back (at once: it has completed)
        free_slots.push_back(slot_of[done]);
        tickets.erase(tickets.begin() + ptrdiff_t(done));
        slot_of.erase(slot_of.begin() + ptrdiff_t(done));
    }
    run.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    run.gb_per_s = run.seconds > 0 ? double(run.bytes) / run.seconds / 1e9 : 0;
    return run;
}

}  // namespace sluice
