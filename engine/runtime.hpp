// A model ready to run under a memory budget: opens it, plans memory (--ram, --resident, and the
// shapes of the forward passes the command will run), and picks the weight provider — everything
// resident when it fits and was asked for, else the streamer over the chosen reader. Shared by
// run, perplexity and bench (and what a batch scheduler builds on: plan its RunShape, run it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/device_planner.hpp"
#include "engine/device_weights.hpp"
#include "engine/memory_limit.hpp"
#include "engine/memory_planner.hpp"
#include "engine/model_loader.hpp"
#include "engine/segment_io.hpp"
#include "engine/streamer.hpp"
#include "engine/trace.hpp"

namespace CLI { class App; }

namespace sluice {

struct RuntimeOptions {
    uint64_t ram_budget_bytes = 0;     // 0: 85% of the memory free on the host or under the cgroup limit
    ResidentMode resident = ResidentMode::automatic;
    // The forward passes the command runs, one at a time (the plan holds the largest); each pass
    // must be built with ForwardOptions{shape} of one of these (or a smaller shape).
    std::vector<RunShape> shapes{RunShape{}};
    uint64_t other_pass_bytes = 0;     // MemoryRequest::other_pass_bytes
    int cache_resident_layers = -1;    // MemoryRequest::cache_resident_layers (latent caches beyond RAM)
    uint64_t cache_spill_buffer_bytes = 0;
    int n_threads = 0;
    int prefetch_layers = 1;
    int expert_buffers = 0;            // 0: from the plan
    bool speculate = true;
    AttentionForm attention = AttentionForm::automatic;
    std::string io_backend = "auto";   // auto | uring | pread
    int io_queue_depth = 8;
    size_t io_request_bytes = size_t(4) << 20;
    double io_rate_cap = 0;            // bytes/s, 0 = none (what-if runs and tests)
    bool verbose = true;               // print the memory plan on stderr
    std::string device = "auto";       // auto | cpu | cuda | cuda:N
    uint64_t vram_budget_bytes = 0;    // 0: the device's free memory less kVramMarginShare and kVramMarginBytes
    std::string trace_path;            // --trace: Chrome trace-event JSON of the run
};

// What --device resolves to.
struct DeviceChoice {
    bool cuda = false;
    int index = 0;
    std::string reason;                // why this choice (auto: what was found)
};
DeviceChoice resolve_device(const std::string& text);

// The default --vram: free device memory less this share of the device and a fixed reserve (the
// CUDA context, cuBLAS workspaces, other processes' growth).
constexpr double kVramMarginShare = 0.05;
constexpr uint64_t kVramMarginBytes = uint64_t(512) << 20;

// Adds --ram --resident --prefetch --expert-buffers --no-speculate --io --qd --bs --io-rate-cap
// --device --vram --trace.
void add_runtime_options(CLI::App& command, RuntimeOptions& options);
uint64_t parse_byte_size(const std::string& text);  // "16G", "512M", "1.5GiB", "1000000"

struct Runtime {
    std::unique_ptr<OpenModel> model;
    MemoryBudget budget;                        // --ram, or the default and where it came from
    MemoryPlan memory;
    ResidentMode mode = ResidentMode::all;
    ModelWeights resident;                      // mode == all
    // Streaming modes: the reader, the thread that drives it (what the streamer reads through),
    // and an optional rate cap over that thread. Declared inner first: destroyed outer first.
    std::unique_ptr<SegmentIo> io_base;
    std::unique_ptr<SegmentIo> io_background;
    std::unique_ptr<SegmentIo> io;              // --io-rate-cap only
    std::unique_ptr<WeightProvider> provider;
    Streamer* streamer = nullptr;               // provider, when streaming
    // --device cuda: the backend, VRAM as cache level 1 in front of `provider`, and its plan.
    std::unique_ptr<Trace> trace;               // --trace; declared before what records into it
    std::unique_ptr<Backend> backend;
    std::unique_ptr<DeviceWeights> device_weights;
    DevicePlan device_plan;
    std::string device_name = "cpu";
    std::string trace_path;

    const ModelLayout& layout() const { return model->layout; }
    // What a forward pass reads its weights through: the device's view when computing on a device.
    WeightProvider& weights() { return device_weights ? static_cast<WeightProvider&>(*device_weights) : *provider; }
    // A forward pass on the chosen device (the CPU backend on `pool`, or the CUDA backend), reading
    // through weights() or through `over` (a wrapper of weights(): e.g. the routing recorder).
    std::unique_ptr<DeepseekForward> make_forward(const ForwardOptions& options, ThreadPool& pool,
                                                  WeightProvider* over = nullptr);
    // Ends the run: writes the trace when one was asked for.
    void finish();
    ~Runtime();
    // What the process holds of what was planned: the provider's weights and buffers (the forward
    // passes report their own, DeepseekForward::allocated_bytes).
    uint64_t weights_allocated_bytes() const;
};

std::unique_ptr<Runtime> make_runtime(const std::string& path, const RuntimeOptions& options);
// The same for a model already open (a command that must tokenize before it knows its shapes).
std::unique_ptr<Runtime> make_runtime(std::unique_ptr<OpenModel> model, const RuntimeOptions& options);

// The host memory plan make_runtime would make for this model and these options (the same budget,
// the same request), without making it: a command can try shapes against its budget before it
// commits to one. Throws ErrorKind::out_of_memory as make_runtime does when even --resident none
// does not fit.
RunMemoryPlan plan_runtime_memory(const OpenModel& model, const RuntimeOptions& options);


}  // namespace sluice
