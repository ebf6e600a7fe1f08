#include "engine/runtime.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cctype>
#include <fstream>
#include <thread>

#include "core/error.hpp"
#include "engine/background_segment_io.hpp"
#include "engine/reader_segment_io.hpp"
#include "kernels/cpu/matmul.hpp"

namespace sluice {

uint64_t parse_byte_size(const std::string& text) {
    size_t used = 0;
    double value = 0;
    try {
        value = std::stod(text, &used);
    } catch (const std::exception&) {
        fail(ErrorKind::invalid_input, "'{}' is not a size (examples: 16G, 512M, 1.5GiB)", text);
    }
    std::string unit = text.substr(used);
    for (auto& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
    if (!unit.empty() && unit.back() == 'B') unit.pop_back();
    if (!unit.empty() && unit.back() == 'I') unit.pop_back();
    double scale = 1;
    if (unit == "K") scale = 1024.0;
    else if (unit == "M") scale = 1024.0 * 1024;
    else if (unit == "G") scale = 1024.0 * 1024 * 1024;
    else if (unit == "T") scale = 1024.0 * 1024 * 1024 * 1024;
    else if (!unit.empty()) fail(ErrorKind::invalid_input, "'{}': unknown size unit '{}'", text, unit);
    if (value < 0) fail(ErrorKind::invalid_input, "'{}': a size cannot be negative", text);
    return uint64_t(value * scale);
}

uint64_t available_ram_bytes() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    uint64_t kib = 0;
    std::string unit;
    while (in >> key >> kib >> unit)
        if (key == "MemAvailable:") return kib * 1024;
    return 0;
}

void add_runtime_options(CLI::App& c, RuntimeOptions& o) {
    c.add_option_function<std::string>(
         "--ram", [&o](const std::string& s) { o.ram_budget_bytes = parse_byte_size(s); },
         "Memory budget for weights, caches and activations (default: 85% of available RAM)");
    c.add_option_function<std::string>(
         "--resident", [&o](const std::string& s) { o.resident = parse_resident_mode(s); },
         "What stays in memory: none (only segments in flight), dense, auto (fill the budget), all")
        ->default_str("auto");
    c.add_option("--prefetch", o.prefetch_layers, "Dense segments read ahead of compute")->capture_default_str();
    c.add_option("--expert-buffers", o.expert_buffers, "Expert staging/cache buffers (0: from the budget)");
    c.add_flag("!--no-speculate", o.speculate, "Do not prefetch experts predicted from the previous layer");
    c.add_option_function<std::string>(
         "--attention", [&o](const std::string& s) { o.attention = parse_attention_form(s); },
         "MLA form: absorbed (over the latent cache), decompressed (expanded keys and values), or auto "
         "(per step, the one with fewer multiply-adds: decompressed for prefill, absorbed for decode)")
        ->default_str("auto");
    c.add_flag_function(
        "--exact-dot", [](int64_t) { cpu::set_quant_dot(cpu::QuantDot::exact); },
        "Dequantise quantised weights to f32 for every dot product instead of the fused 8-bit path");
    c.add_option("--io", o.io_backend, "Weight reader: auto (io_uring, else pread), uring or pread")
        ->capture_default_str();
    c.add_option("--qd", o.io_queue_depth, "Reads in flight")->capture_default_str();
    c.add_option_function<std::string>(
         "--bs", [&o](const std::string& s) { o.io_request_bytes = size_t(parse_byte_size(s)); },
         "Largest single read (multiple of 4 KiB)")
        ->default_str("4M");
    c.add_option_function<std::string>(
         "--io-rate-cap", [&o](const std::string& s) { o.io_rate_cap = double(parse_byte_size(s)); },
         "Deliver weights no faster than this many bytes/s (what-if runs)");
}

std::unique_ptr<Runtime> make_runtime(const std::string& path, const RuntimeOptions& options) {
    auto rt = std::make_unique<Runtime>();
    rt->model = open_model(path);
    const auto& layout = rt->model->layout;

    MemoryRequest req;
    req.ram_budget_bytes = options.ram_budget_bytes ? options.ram_budget_bytes : available_ram_bytes() / 100 * 85;
    req.context = options.context;
    req.batch_tokens = options.batch_tokens;
    req.n_sequences = options.n_sequences;
    req.cache_resident_layers = options.cache_resident_layers;
    req.cache_spill_buffer_bytes = options.cache_spill_buffer_bytes;
    req.other_bytes = options.other_bytes;
    req.n_threads = options.n_threads > 0 ? options.n_threads : int(std::thread::hardware_concurrency());
    req.expert_slots = options.expert_buffers;
    req.resident = options.resident;
    if (req.resident == ResidentMode::automatic) {
        // Everything resident when it fits; else stream with what the budget allows.
        MemoryRequest everything = req;
        everything.ram_budget_bytes = 0;
        everything.resident = ResidentMode::all;
        const MemoryPlan p = plan_memory(layout, rt->model->plan, everything);
        if (p.total_bytes <= req.ram_budget_bytes) req.resident = ResidentMode::all;
    }
    rt->memory = plan_memory(layout, rt->model->plan, req);
    rt->mode = req.resident;
    if (options.verbose)
        fmt::print(stderr, "memory: --resident {} under a budget of {:.2f} GiB: {}\n", resident_mode_name(rt->mode),
                   double(req.ram_budget_bytes) / (1 << 30), rt->memory.describe());

    if (rt->mode == ResidentMode::all) {
        rt->resident = load_resident(layout, rt->model->plan, *rt->model->source);
        rt->provider = std::make_unique<ResidentWeights>(rt->resident);
        return rt;
    }
    io::ReaderOptions reader;
    reader.backend = io::parse_backend(options.io_backend);
    reader.queue_depth = unsigned(std::max(options.io_queue_depth, 1));
    reader.request_bytes = options.io_request_bytes;
    auto base = std::make_unique<ReaderSegmentIo>(rt->model->source->files(), reader);
    if (options.verbose) fmt::print(stderr, "io: {} reader, queue depth {}\n", base->backend_name(), reader.queue_depth);
    rt->io_base = std::move(base);
    // Its own thread keeps the reader's queue full while the compute threads work.
    rt->io_background = std::make_unique<BackgroundSegmentIo>(*rt->io_base);
    if (options.io_rate_cap > 0)
        rt->io = std::make_unique<RateCappedSegmentIo>(*rt->io_background, options.io_rate_cap);
    SegmentIo& io = rt->io ? *rt->io : *rt->io_background;

    StreamerOptions so;
    // auto keeps the dense parts resident when the planner found room for them.
    so.resident = rt->memory.resident_dense_bytes > 0 ? ResidentMode::dense : ResidentMode::none;
    so.dense_buffers = std::max(rt->memory.dense_slots, 2);
    so.prefetch_layers = options.prefetch_layers;
    so.speculate = options.speculate;
    int expert_buffers = rt->memory.expert_slots;
    if (rt->memory.expert_slot_bytes > 0)
        expert_buffers += int(rt->memory.expert_cache_bytes / rt->memory.expert_slot_bytes);
    so.expert_buffers = std::max(expert_buffers, 1);
    auto streamer = std::make_unique<Streamer>(layout, rt->model->plan, *rt->model->source, io, so);
    rt->streamer = streamer.get();
    rt->provider = std::move(streamer);
    return rt;
}

}  // namespace sluice
