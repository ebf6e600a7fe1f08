// A model ready to run under a memory budget: opens it, plans memory (--ram, --resident,
// --context, --batch), and picks the weight provider — everything resident when it fits and
// was asked for, else the streamer over the chosen reader. Shared by run, perplexity and bench.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/deepseek_v3.hpp"
#include "engine/memory_planner.hpp"
#include "engine/model_loader.hpp"
#include "engine/segment_io.hpp"
#include "engine/streamer.hpp"

namespace CLI { class App; }

namespace sluice {

struct RuntimeOptions {
    uint64_t ram_budget_bytes = 0;     // 0: 85% of MemAvailable at start
    ResidentMode resident = ResidentMode::automatic;
    int64_t context = 4096;
    int64_t batch_tokens = 128;
    int n_sequences = 1;               // latent caches of `context` positions
    int cache_resident_layers = -1;    // see MemoryRequest
    uint64_t cache_spill_buffer_bytes = 0;
    uint64_t other_bytes = 0;
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
};

// Adds --ram --resident --prefetch --expert-buffers --no-speculate --io --qd --bs --io-rate-cap.
void add_runtime_options(CLI::App& command, RuntimeOptions& options);
uint64_t parse_byte_size(const std::string& text);  // "16G", "512M", "1.5GiB", "1000000"
uint64_t available_ram_bytes();

struct Runtime {
    std::unique_ptr<OpenModel> model;
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

    const ModelLayout& layout() const { return model->layout; }
};

std::unique_ptr<Runtime> make_runtime(const std::string& path, const RuntimeOptions& options);

}  // namespace sluice
