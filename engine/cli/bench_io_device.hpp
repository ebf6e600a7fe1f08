// `sluice bench-io --to-device`: disk-to-GPU throughput by stage. NVMe -> pinned host (the io_uring
// O_DIRECT reader into page-locked staging slots), pinned host -> device (copies on a copy
// stream), and the two pipelined as the streamer runs them (a slot is read, copied, and read into
// again only once its copy's event has completed), each alone and then together, alternating over
// rounds; the pipeline as a fraction of its slowest stage. Where libcufile (GPUDirect Storage) can
// be loaded, its reads straight into device memory beside them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sluice::cli {

struct DeviceIoBenchOptions {
    std::vector<std::string> paths;
    std::vector<uint64_t> sizes;
    uint64_t request_bytes = 4 << 20;
    unsigned queue_depth = 8;
    double seconds = 5;
    int rounds = 3;
    int device = 0;
    bool json = false;
    std::function<bool()> drop_caches;  // before each disk run; returns whether it could
};

// Prints the table (or returns the JSON when options.json) and returns the results.
nlohmann::json run_bench_io_to_device(const DeviceIoBenchOptions& options);

}  // namespace sluice::cli
