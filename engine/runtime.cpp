#include "engine/runtime.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <thread>

#include "core/error.hpp"
#include "core/process_memory.hpp"
#include "engine/background_segment_io.hpp"
#include "engine/cuda/cuda_backend.hpp"
#include "engine/reader_segment_io.hpp"
#include "kernels/cuda/device.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/ops.hpp"

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

uint64_t Runtime::weights_allocated_bytes() const {
    if (streamer) return streamer->allocated_bytes();
    return uint64_t(resident.resident_bytes);
}

void add_runtime_options(CLI::App& c, RuntimeOptions& o) {
    c.add_option_function<std::string>(
         "--ram", [&o](const std::string& s) { o.ram_budget_bytes = parse_byte_size(s); },
         "Memory budget for the whole process (default: 85% of the memory free on the host or, when lower, under the cgroup memory limit)");
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
    c.add_option_function<std::string>(
         "--attention-precision",
         [](const std::string& s) {
             if (s != "f32" && s != "bf16")
                 fail(ErrorKind::invalid_input, "--attention-precision: expected f32 or bf16, got '{}'", s);
             cpu::set_attention_math(s == "bf16" ? cpu::AttentionMath::bf16 : cpu::AttentionMath::f32);
             if (s == "bf16" && !cpu::cpu_has_bf16_attention())
                 fmt::print(stderr, "--attention-precision bf16: this CPU has no AVX-512 BF16 (or SLUICE_CPU caps its "
                                    "path); the CPU's attention stays f32\n");
         },
         "Products of the CPU's attention: f32, or bf16 (about twice the rate on CPUs with AVX-512 BF16: the "
         "absorbed (decode) form's products, and the prompt form's key expansion through W_UK and its scores and "
         "weighted sums; queries, keys, values and probabilities rounded to bf16: attention outputs within ~0.5% of "
         "f32's, logits no longer within 2e-5 of transformers')")
        ->default_str("f32");
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
    c.add_option("--device", o.device,
                 "Where to compute: auto (a CUDA device when one is usable, else the CPU), cpu, cuda or cuda:N")
        ->capture_default_str();
    c.add_option_function<std::string>(
         "--vram", [&o](const std::string& s) { o.vram_budget_bytes = parse_byte_size(s); },
         "Device memory budget (default: free device memory less 5% of the device and 512 MiB)");
    c.add_option("--trace", o.trace_path,
                 "Write a timeline of reads, copies, kernels and waits as Chrome trace-event JSON (Perfetto) to FILE");
}

DeviceChoice resolve_device(const std::string& text) {
    DeviceChoice c;
    if (text == "cpu") {
        c.reason = "asked for";
        return c;
    }
    if (text == "auto") {
        const auto q = cuda::query_devices();
        if (q.devices.empty()) {
            c.reason = "auto: " + q.reason;
            return c;
        }
        c.cuda = true;
        c.reason = "auto: " + q.devices.front().name;
        return c;
    }
    if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
        c.cuda = true;
        c.reason = "asked for";
        if (text.size() > 5) {
            size_t used = 0;
            try {
                c.index = std::stoi(text.substr(5), &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != text.size() - 5 || c.index < 0)
                fail(ErrorKind::invalid_input, "--device '{}': expected cuda:N with N a device number", text);
        }
        return c;
    }
    fail(ErrorKind::invalid_input, "--device must be auto, cpu, cuda or cuda:N, not '{}'", text);
}

namespace {

// The device side of --device cuda: the backend under the VRAM budget, and the plan of what it keeps.
void plan_device(Runtime& rt, const RuntimeOptions& options, const DeviceChoice& choice) {
    const auto q = cuda::query_devices();
    if (!q.compiled) fail(ErrorKind::unsupported, "--device cuda: this sluice was built without CUDA (nvcc not found at build time)");
    if (choice.index >= int(q.devices.size()))
        fail(ErrorKind::unsupported, "--device cuda:{}: {}", choice.index,
             q.devices.empty() ? q.reason
                               : fmt::format("there are {} CUDA device(s)", q.devices.size()));
    const auto& info = q.devices[size_t(choice.index)];
    uint64_t budget = options.vram_budget_bytes;
    const char* source = "--vram";
    if (budget == 0) {
        const uint64_t margin = uint64_t(double(info.total_bytes) * kVramMarginShare) + kVramMarginBytes;
        budget = info.free_bytes > margin ? info.free_bytes - margin : 0;
        source = "free device memory less 5% and 512 MiB";
    }
    CudaBackendOptions bo;
    bo.device = choice.index;
    bo.memory_limit_bytes = budget;
    const DeviceRequest req = device_request(rt.model->layout, options.shapes.empty() ? std::vector<RunShape>{rt.memory.shape} : options.shapes,
                                             budget, options.expert_buffers, bo);
    rt.device_plan = plan_device_memory(rt.model->layout, rt.model->plan, req);
    bo.cache_in_host_memory = !rt.device_plan.mla_on_device;
    rt.backend = make_cuda_backend(bo);
    rt.device_name = rt.backend->name();
    if (options.verbose)
        fmt::print(stderr, "device: {} ({}), budget {:.2f} GiB ({}): {}\n", rt.device_name, choice.reason,
                   double(budget) / (1 << 30), source, rt.device_plan.describe());
}

}  // namespace

std::unique_ptr<DeepseekForward> Runtime::make_forward(const ForwardOptions& options, ThreadPool& pool,
                                                       WeightProvider* over) {
    WeightProvider& w = over ? *over : weights();
    std::unique_ptr<DeepseekForward> f;
    if (backend) {
        f = std::make_unique<DeepseekForward>(model->layout, w, options, *backend);
    } else {
        f = std::make_unique<DeepseekForward>(model->layout, w, options, pool);
        f->backend().set_trace(trace.get());
    }
    return f;
}

void Runtime::finish() {
    if (!trace) return;
    if (backend) backend->synchronize();
    trace->write(trace_path);
}

Runtime::~Runtime() {
    if (streamer) streamer->set_trace(nullptr);
}

std::unique_ptr<Runtime> make_runtime(const std::string& path, const RuntimeOptions& options) {
    return make_runtime(open_model(path), options);
}

namespace {

MemoryBudget runtime_budget(const RuntimeOptions& options) {
    return options.ram_budget_bytes ? MemoryBudget{options.ram_budget_bytes, "--ram"} : default_memory_budget(0.85);
}

MemoryRequest runtime_memory_request(const RuntimeOptions& options, const MemoryBudget& budget) {
    MemoryRequest req;
    req.ram_budget_bytes = budget.bytes;
    req.shapes = options.shapes;
    req.other_pass_bytes = options.other_pass_bytes;
    req.cache_resident_layers = options.cache_resident_layers;
    req.cache_spill_buffer_bytes = options.cache_spill_buffer_bytes;
    req.n_threads = options.n_threads > 0 ? options.n_threads : int(std::thread::hardware_concurrency());
    req.expert_slots = options.expert_buffers;
    req.prefetch_layers = std::max(options.prefetch_layers, 0);
    req.resident = options.resident;
    req.held_bytes = process_memory_bytes("VmRSS");
    return req;
}

}  // namespace

RunMemoryPlan plan_runtime_memory(const OpenModel& model, const RuntimeOptions& options) {
    return plan_run_memory(model.layout, model.plan, runtime_memory_request(options, runtime_budget(options)));
}

std::unique_ptr<Runtime> make_runtime(std::unique_ptr<OpenModel> model, const RuntimeOptions& options) {
    auto rt = std::make_unique<Runtime>();
    rt->model = std::move(model);
    const auto& layout = rt->model->layout;
    const DeviceChoice device = resolve_device(options.device);
    if (!options.trace_path.empty()) {
        rt->trace = std::make_unique<Trace>();
        rt->trace_path = options.trace_path;
    }

    rt->budget = runtime_budget(options);
    const MemoryRequest req = runtime_memory_request(options, rt->budget);
    const RunMemoryPlan run = plan_run_memory(layout, rt->model->plan, req);
    rt->memory = run.memory;
    rt->mode = run.mode;
    if (options.verbose)
        fmt::print(stderr, "memory: budget {:.2f} GiB ({}); --resident {}: {}\n", double(rt->budget.bytes) / (1 << 30),
                   rt->budget.source, resident_mode_name(rt->mode), rt->memory.describe());
    if (device.cuda) plan_device(*rt, options, device);
    else if (options.verbose) fmt::print(stderr, "device: cpu ({})\n", device.reason);
    // The host provider is made below; the device side goes in front of it when it exists.
    auto attach_device = [&] {
        if (rt->backend) {
            DeviceWeightsOptions dwo;
            dwo.dense_resident = rt->device_plan.dense_resident;
            dwo.dense_slots = std::max(rt->device_plan.dense_slots, 2);
            dwo.expert_slots = rt->device_plan.expert_slots + int(rt->device_plan.expert_cache_entries);
            rt->device_weights =
                std::make_unique<DeviceWeights>(layout, rt->model->plan, *rt->model->source, *rt->provider, *rt->backend, dwo);
            rt->backend->set_trace(rt->trace.get());
        }
        if (rt->streamer) rt->streamer->set_trace(rt->trace.get());
    };

    if (rt->mode == ResidentMode::all) {
        rt->resident = load_resident(layout, rt->model->plan, *rt->model->source);
        rt->provider = std::make_unique<ResidentWeights>(rt->resident);
        attach_device();
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
    so.resident = run.dense_resident() ? ResidentMode::dense : ResidentMode::none;
    so.prefetch_layers = req.prefetch_layers;
    so.speculate = options.speculate;
    so.expert_buffers = run.expert_buffers();
    if (rt->backend) so.dense_elsewhere = rt->device_plan.dense_resident;  // never read: the device holds them
    auto streamer = std::make_unique<Streamer>(layout, rt->model->plan, *rt->model->source, io, so);
    rt->streamer = streamer.get();
    rt->provider = std::move(streamer);
    attach_device();
    return rt;
}

}  // namespace sluice
