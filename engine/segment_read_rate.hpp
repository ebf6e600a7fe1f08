// The rate at which the streamer's own reader reads a model's routed experts: each expert one
// segment (its gate, up and down slabs), eight in flight, through the io_uring O_DIRECT reader
// with the runtime's request size. An expert's slabs do not divide into whole requests (a Q4_K
// V3 slab is 8.3 MB: two 4 MiB requests and a small one), so this is below bench-io's
// sequential rate, and it is the rate decode and batched steps read at.
#pragma once

#include <cstdint>
#include <string>

#include "engine/model_loader.hpp"
#include "io/segment_reader.hpp"

namespace sluice {

struct SegmentReadRun {
    double gb_per_s = 0;
    uint64_t bytes = 0;
    double seconds = 0;
    int64_t segments = 0;
    std::string backend;
};

// Reads experts in file order from the middle of the model (away from what other runs just read),
// wrapping round, `in_flight` at a time, for about `seconds`. invalid_input when the model has no experts.
SegmentReadRun time_expert_reads(const OpenModel& model, const io::ReaderOptions& reader, int in_flight, double seconds);

}  // namespace sluice
