// One timed run of sluice's own reader over files, in order, `request_bytes` at a time with
// `queue_depth` reads in flight: the rate `bench-io` reports and `sluice plan` predicts with.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/segment_reader.hpp"
#include "io/staging_ring.hpp"

namespace sluice::io {

struct ReadRun {
    double gb_per_s = 0;
    uint64_t bytes = 0;
    double seconds = 0;
    std::string backend;              // the reader's backend name
    std::vector<double> latency_us;   // per request, submit to completion
};

// Reads the files (as `reader_options` say: backend, O_DIRECT, request size, queue depth) from
// `start_bytes` into them (wrapping round), into the ring's slots (one per read in flight: the
// ring needs queue_depth slots of request_bytes), until `seconds` have passed or `max_bytes` were read.
ReadRun time_sequential_reads(const std::vector<std::string>& paths, const ReaderOptions& reader_options,
                              StagingRing& ring, double seconds, uint64_t max_bytes = UINT64_MAX,
                              uint64_t start_bytes = 0);

}  // namespace sluice::io
