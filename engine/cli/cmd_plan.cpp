// `sluice plan`: will a model run on a machine, and how fast? For a model file, or a model known
// from its dimensions alone (--preset v3 --mix q4_k_m: the full 671B without the download), and
// memory budgets and rates that are measured here, given as flags, or taken from a table of GPUs:
// the memory placement the planners would choose (VRAM, RAM, streamed), and per phase (decode,
// prefill, batched decode) the predicted tokens/s and where a step's time goes. The model and its
// equations: engine/perf_model.hpp and the README's "Performance model".
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "core/process_memory.hpp"
#include "engine/cli/bench_passes.hpp"
#include "engine/cli/command.hpp"
#include "engine/memory_limit.hpp"
#include "engine/compute_profile.hpp"
#include "engine/device_specs.hpp"
#include "engine/perf_model.hpp"
#include "engine/placement.hpp"
#include "engine/runtime.hpp"
#include "engine/segment_read_rate.hpp"
#include "engine/shape_model.hpp"
#include "io/read_rate.hpp"

namespace sluice::cli {

namespace {

// Assumed fractions of a GPU's peaks that its kernels reach (issue 13's targets): quantised GEMV
// at 70% of memory bandwidth, prefill GEMM (dequantised tiles through cuBLAS BF16 at ~75% of
// peak, 60% of that) at 45% of the dense BF16 peak; and a kernel launch costs 5 us.
constexpr double kGpuBandwidthFraction = 0.7;
constexpr double kGpuFlopsFraction = 0.45;
constexpr double kGpuLaunchSeconds = 5e-6;

struct PlanArgs {
    std::string model;
    std::optional<std::string> preset;
    std::optional<int> layers, dense_layers;
    std::optional<int64_t> experts;
    std::string mix, expert_type = "q4_k", dense_type = "q4_k", embed_type = "q4_k", head_type = "q6_k";
    std::string ram, vram, gpu, routing, compute_profile;
    std::string resident = "auto";
    double disk_gb = 0, pcie_gb = 0, cpu_gemm_gflops = 0, cpu_bw_gb = 0, gpu_gemm_tflops = 0, gpu_bw_gb = 0;
    double disk_seconds = 1.5;
    double guess_accuracy = -1;  // < 0: the routing file's, else 0
    int64_t batch_tokens = 512, context = 4096, decode_context = 512, decode = 16;
    int sequences = 1;
    std::string prompt_lengths = "16,128,512,2048", batch_sizes = "1,4,16,64,256";
    int threads = 0, prefetch = 1, expert_buffers = 0;
    bool json = false, bench = false, gemm_rate_pass = false;
};

struct Rate {
    std::string name;
    double value = 0;
    std::string unit;
    std::string source;
};

double gib(uint64_t b) { return double(b) / double(uint64_t(1) << 30); }

int run_plan(const PlanArgs& a) {
    if (a.model.empty() == !a.preset)
        fail(ErrorKind::invalid_input, "give a model (-m FILE) or its shapes (--preset v3 ...), not both");
    std::unique_ptr<OpenModel> model;
    if (!a.model.empty()) {
        model = open_model(a.model);
    } else {
        ShapeModelOptions s;
        s.preset = *a.preset;
        s.layers = a.layers;
        s.dense_layers = a.dense_layers;
        s.experts = a.experts;
        s.mix = a.mix;
        s.expert_type = parse_synth_dtype(a.expert_type);
        s.dense_type = parse_synth_dtype(a.dense_type);
        s.embed_type = parse_synth_dtype(a.embed_type);
        s.head_type = parse_synth_dtype(a.head_type);
        model = open_shape_model(s);
    }
    const auto& d = model->layout;
    const auto prompts = parse_positive_list(a.prompt_lengths, "--prompt-lengths");
    const auto batches = parse_positive_list(a.batch_sizes, "--batch-sizes");
    int64_t widest = 1;
    for (auto b : batches) widest = std::max(widest, b);
    ThreadPool pool(a.threads);
    std::vector<Rate> rates;

    // The memory the run would be planned with, as make_runtime plans it: for the passes `sluice
    // bench` runs (--bench), else one pass of --sequences x --context positions; the process as it
    // is now (the model open, no weights read) for what it holds before the plan.
    MemoryRequest host;
    const MemoryBudget budget = a.ram.empty() ? default_memory_budget(0.85) : MemoryBudget{parse_byte_size(a.ram), "flag"};
    host.ram_budget_bytes = budget.bytes;
    rates.push_back({"ram", double(host.ram_budget_bytes), "GiB", budget.source});
    std::optional<BenchPasses> bench;
    if (a.bench) {
        bench = bench_passes(*model, prompts, batches, a.decode, a.batch_tokens, pool.size(), a.gemm_rate_pass);
        host.shapes = bench->shapes();
        host.other_pass_bytes = bench->gemm_rate_bytes;
    } else {
        host.shapes = {RunShape{std::max(a.sequences, 1), a.context, std::max(a.batch_tokens, widest)}};
    }
    host.n_threads = pool.size();
    host.prefetch_layers = std::max(a.prefetch, 0);
    host.expert_slots = a.expert_buffers;
    host.resident = parse_resident_mode(a.resident);
    host.held_bytes = process_memory_bytes("VmRSS");
    const RunMemoryPlan host_plan = plan_run_memory(d, model->plan, host);

    // The GPU: a table row, flags, or none.
    const bool gpu = !a.gpu.empty() || a.gpu_gemm_tflops > 0 || a.gpu_bw_gb > 0;
    const DeviceSpec* spec = a.gpu.empty() ? nullptr : &find_device(a.gpu);
    const std::string table = spec ? "table: " + spec->name : "";
    double gpu_bw = 0, gpu_flops = 0, pcie = 0;
    uint64_t vram = 0;
    if (gpu) {
        if (a.gpu_bw_gb > 0) gpu_bw = a.gpu_bw_gb * 1e9;
        else if (spec) gpu_bw = spec->memory_bytes_per_s;
        if (a.gpu_gemm_tflops > 0) gpu_flops = a.gpu_gemm_tflops * 1e12;
        else if (spec) gpu_flops = spec->bf16_flops;
        if (!a.vram.empty()) vram = parse_byte_size(a.vram);
        else if (spec) vram = uint64_t(spec->vram_bytes);
        if (a.pcie_gb > 0) pcie = a.pcie_gb * 1e9;
        else if (spec) pcie = spec->pcie_bytes_per_s;
        if (gpu_bw <= 0 || gpu_flops <= 0 || vram == 0 || pcie <= 0)
            fail(ErrorKind::invalid_input, "a GPU not in the table needs --gpu-bw, --gpu-gemm, --vram and --pcie");
        rates.push_back({"vram", double(vram), "GiB", a.vram.empty() ? table : "flag"});
        rates.push_back({"gpu memory bandwidth", gpu_bw, "GB/s", a.gpu_bw_gb > 0 ? "flag" : table});
        rates.push_back({"gpu bf16 tensor peak", gpu_flops, "TFLOP/s", a.gpu_gemm_tflops > 0 ? "flag" : table});
        rates.push_back({"host->device", pcie, "GB/s",
                         a.pcie_gb > 0 ? "flag" : fmt::format("{} (PCIe {}.0 x16 in practice)", table, spec->pcie_generation)});
    }

    // Placement.
    Placement placement;
    std::string ram_plan, vram_plan;
    std::optional<GpuPlacement> gp;
    ram_plan = fmt::format("--resident {}: {}", resident_mode_name(host_plan.mode), host_plan.memory.describe());
    if (gpu) {
        gp = gpu_placement(*model, host_plan, host.shapes, vram, a.expert_buffers);
        placement = gp->placement;
        vram_plan = gp->device.describe();
    } else {
        placement = cpu_placement(*model, host_plan);
    }
    int64_t n_experts = 0;
    for (const auto& l : model->plan.layers) n_experts += int64_t(l.experts.size());
    const bool streams = std::any_of(placement.dense.begin(), placement.dense.end(), [](Tier t) { return t == Tier::disk; }) ||
                         placement.device_expert_entries + placement.host_expert_entries < n_experts;

    // Rates of the disk and of compute.
    LinkRates links;
    links.pcie_bytes_per_s = pcie;
    if (a.disk_gb > 0) {
        links.disk_bytes_per_s = a.disk_gb * 1e9;
        rates.push_back({"disk", links.disk_bytes_per_s, "GB/s", "flag"});
    } else if (streams) {
        if (model->format == "shapes")
            fail(ErrorKind::invalid_input, "the plan streams from disk and a shapes-only model has no file to time: give --disk GB/s");
        io::ReaderOptions ro;  // the runtime's defaults: io_uring, O_DIRECT, 4 MiB requests, 8 in flight
        ro.request_bytes = size_t(4) << 20;
        ro.queue_depth = 8;
        io::StagingRing ring(ro.queue_depth, ro.request_bytes, 4);
        const auto run = io::time_sequential_reads(model->source->files().paths, ro, ring, a.disk_seconds / 2);
        links.disk_bytes_per_s = run.gb_per_s * 1e9;
        rates.push_back({"disk", links.disk_bytes_per_s, "GB/s",
                         fmt::format("measured: {} O_DIRECT 4 MiB x 8 over the model, {:.2f} GB in {:.1f} s (dense segments)",
                                     run.backend, double(run.bytes) / 1e9, run.seconds)});
        if (n_experts > 0) {
            const auto experts = time_expert_reads(*model, ro, 8, a.disk_seconds / 2);
            links.expert_disk_bytes_per_s = experts.gb_per_s * 1e9;
            rates.push_back({"disk, experts", links.expert_disk_bytes_per_s, "GB/s",
                             fmt::format("measured: {} experts, 8 in flight, {:.2f} GB in {:.1f} s", experts.segments,
                                         double(experts.bytes) / 1e9, experts.seconds)});
        }
    }
    std::unique_ptr<ComputeTimes> compute;
    std::optional<CpuComputeProfile> profile;
    if (gpu) {
        compute = roofline_times(*model, gpu_bw * kGpuBandwidthFraction, gpu_flops * kGpuFlopsFraction, kGpuLaunchSeconds,
                                 fmt::format("GPU roofline: {:.0f}% of memory bandwidth, {:.0f}% of the BF16 peak, {:.0f} us per "
                                             "kernel (assumed)",
                                             100 * kGpuBandwidthFraction, 100 * kGpuFlopsFraction, kGpuLaunchSeconds * 1e6));
    } else if (a.cpu_gemm_gflops > 0 && a.cpu_bw_gb > 0) {
        compute = roofline_times(*model, a.cpu_bw_gb * 1e9, a.cpu_gemm_gflops * 1e9, 0, "CPU roofline from --cpu-bw and --cpu-gemm");
        rates.push_back({"cpu memory bandwidth", a.cpu_bw_gb * 1e9, "GB/s", "flag"});
        rates.push_back({"cpu gemm", a.cpu_gemm_gflops * 1e9, "GFLOP/s", "flag"});
    } else {
        if (a.cpu_gemm_gflops > 0 || a.cpu_bw_gb > 0)
            fail(ErrorKind::invalid_input, "--cpu-gemm and --cpu-bw go together (else both are measured here)");
        std::string how = fmt::format("measured here: the model's own shapes, {} threads", pool.size());
        if (!a.compute_profile.empty() && std::filesystem::exists(a.compute_profile)) {
            std::ifstream in(a.compute_profile);
            const auto j = nlohmann::json::parse(in, nullptr, false);
            if (j.is_discarded()) fail(ErrorKind::invalid_input, "{}: not JSON", a.compute_profile);
            profile = CpuComputeProfile::from_json(j, a.compute_profile);
            how = fmt::format("measured here earlier ({})", a.compute_profile);
        } else {
            profile = measure_cpu_compute(*model, pool);
            if (!a.compute_profile.empty()) {
                std::ofstream out(a.compute_profile);
                out << profile->to_json().dump(1) << "\n";
                if (!out) fail(ErrorKind::io, "{}: cannot write", a.compute_profile);
            }
        }
        compute = measured_cpu_times(*model, *profile);
        const MatrixTiming* expert = nullptr;
        for (const auto& m : profile->matrices)
            if (m.what.rfind("expert", 0) == 0) {
                expert = &m;
                break;
            }
        if (expert) {
            const double bytes = double(row_bytes(expert->type, expert->cols) * expert->rows);
            rates.push_back({"cpu expert gemv", bytes / expert->seconds.at(1), "GB/s",
                             fmt::format("{}: {} at 1 token, {} threads", how, expert->what, profile->threads)});
            const double n = 64, flops = 2.0 * double(expert->rows * expert->cols) * n;
            rates.push_back({"cpu expert gemm", flops / expert->seconds.at(n), "GFLOP/s",
                             fmt::format("{}: {} at 64 tokens", how, expert->what)});
        }
    }
    Routing routing = a.routing.empty() ? Routing::uniform(d) : Routing::measured(d, RoutingCounts::load(a.routing), a.routing);
    if (a.guess_accuracy >= 0) {
        routing.guess_accuracy = std::min(a.guess_accuracy, 1.0);
        routing.source += fmt::format("; early guesses name {:.0f}% of the needed experts (flag)", 100 * routing.guess_accuracy);
    }
    PerfModel perf(*model, placement, *compute, routing, links);

    // The phases.
    std::vector<PhasePrediction> phases;
    auto decode_phase = [&](const std::string& name, int b, int64_t context) {
        if (!gp || !gp->device.mla_on_device) return perf.decode(name, b, context, a.decode);
        // b sequences' latent caches may not fit where one sequence's did: then they cross the link.
        const uint64_t need = uint64_t(b) * uint64_t(context + a.decode) * placement.mla_bytes_per_position;
        if (need <= gp->device.mla_cache_bytes) return perf.decode(name, b, context, a.decode);
        Placement host_mla = placement;
        host_mla.mla_on_device = false;
        PerfModel spill(*model, host_mla, *compute, routing, links);
        auto ph = spill.decode(name, b, context, a.decode);
        ph.name += " (MLA in RAM)";
        return ph;
    };
    if (bench) {
        // What `sluice bench` runs: each prompt from position 0 in its pass's steps; decode after the
        // first prompt; b sequences of 4-token prompts decoding together.
        for (size_t i = 0; i < bench->prompts.size(); ++i) {
            const auto& [len, shape] = bench->prompts[i];
            // The first prompt is the run's first work: its first step finds the caches empty.
            phases.push_back(perf.prefill(fmt::format("prompt {}", len), len, shape.step_tokens, i == 0));
            if (i == 0) phases.push_back(perf.decode("decode", 1, len, a.decode));
        }
        for (const auto& [b, shape] : bench->batches)
            phases.push_back(decode_phase(fmt::format("decode x{}", b), int(b), BenchPasses::kBatchPromptTokens));
    } else {
        phases.push_back(decode_phase("decode", 1, a.decode_context));
        for (int64_t p : prompts) phases.push_back(perf.prefill(fmt::format("prefill {}", p), p, a.batch_tokens));
        for (int64_t b : batches)
            if (b > 1) phases.push_back(decode_phase(fmt::format("decode x{}", b), int(b), a.decode_context));
    }

    uint64_t dense_bytes = 0, expert_bytes = 0;
    for (const auto& l : model->plan.layers) {
        dense_bytes += l.dense.bytes() + l.vectors.bytes();
        for (const auto& e : l.experts) expert_bytes += e.bytes();
    }
    const uint64_t global_bytes = model->plan.globals.bytes() + model->plan.global_vectors.bytes();
    int in_vram = 0, in_ram = 0, on_disk = 0;
    for (Tier t : placement.dense) (t == Tier::device ? in_vram : t == Tier::host ? in_ram : on_disk)++;

    if (a.json) {
        nlohmann::json j;
        j["model"] = model->path;
        j["format"] = model->format;
        j["layers"] = d.n_layers;
        j["experts_per_layer"] = d.n_experts;
        j["bytes"] = {{"dense", dense_bytes}, {"experts", expert_bytes}, {"globals", global_bytes},
                      {"total", dense_bytes + expert_bytes + global_bytes}};
        for (const auto& r : rates) j["rates"].push_back({{"name", r.name}, {"value", r.value}, {"source", r.source}});
        j["compute"] = compute->describe();
        if (profile) j["cpu_profile"] = profile->to_json();
        j["routing"] = routing.source;
        j["memory"] = {{"ram", ram_plan}, {"vram", vram_plan}};
        j["resident"] = resident_mode_name(host_plan.mode);
        j["memory_plan_bytes"] = host_plan.memory.to_json();
        j["placement"] = {{"dense_vram", in_vram},
                          {"dense_ram", in_ram},
                          {"dense_disk", on_disk},
                          {"head", tier_name(placement.head)},
                          {"experts_total", n_experts},
                          {"experts_vram", placement.device_expert_entries},
                          {"experts_ram", placement.host_expert_entries},
                          {"mla_cache", gpu ? (placement.mla_on_device ? "vram" : "ram") : "ram"}};
        if (gp)
            j["vram_plan_bytes"] = {{"total", gp->device.total_bytes},        {"minimum", gp->device.minimum_bytes},
                                    {"mla_cache", gp->device.mla_cache_bytes}, {"mla_on_device", gp->device.mla_on_device},
                                    {"dense", gp->device.resident_dense_bytes}, {"expert_cache", gp->device.expert_cache_bytes},
                                    {"staging", gp->device.staging_bytes}};
        for (const auto& ph : phases) j["phases"].push_back(ph.to_json());
        fmt::print("{}\n", j.dump(2));
        return 0;
    }
    fmt::print("model: {} ({}), {} layers, {} experts per MoE layer, top {}: dense {:.2f} GB, experts {:.2f} GB, embedding "
               "+ head {:.2f} GB\n",
               model->path, model->format, d.n_layers, d.n_experts, d.router.top_k, dense_bytes / 1e9, expert_bytes / 1e9,
               global_bytes / 1e9);
    fmt::print("rates:\n");
    for (const auto& r : rates) {
        const double v = r.unit == "GiB" ? gib(uint64_t(r.value)) : r.unit == "TFLOP/s" ? r.value / 1e12 : r.value / 1e9;
        fmt::print("  {:<22} {:>10.2f} {:<8} {}\n", r.name, v, r.unit, r.source);
    }
    fmt::print("  {:<22} {}\n", "compute", compute->describe());
    fmt::print("  {:<22} {}\n", "routing", routing.source);
    if (gpu) fmt::print("vram: {}\n", vram_plan);
    fmt::print("ram: {}\n", ram_plan);
    fmt::print("placement: dense segments {} in VRAM, {} in RAM, {} streamed; experts {} in VRAM, {} in RAM of {} ({:.1f}% "
               "cached), the rest streamed; head in {}{}\n",
               in_vram, in_ram, on_disk, placement.device_expert_entries, placement.host_expert_entries, n_experts,
               n_experts ? 100.0 * double(placement.device_expert_entries + placement.host_expert_entries) / double(n_experts) : 0,
               tier_name(placement.head), gpu ? fmt::format("; MLA cache in {}", placement.mla_on_device ? "VRAM" : "RAM") : "");
    fmt::print("\n{:<24} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>22}\n", "phase", "tokens/s", "s/step", "GB read",
               "disk s", "copy s", "compute s", "bound", "experts vram/ram/disk");
    for (const auto& ph : phases) {
        const double steps = double(std::max<int64_t>(ph.steps, 1));
        const auto& s = ph.sum;
        fmt::print("{:<24} {:>10.2f} {:>10.3f} {:>9.2f} {:>9.3f} {:>9.3f} {:>9.3f} {:>8} {:>22}\n", ph.name, ph.tokens_per_s(),
                   ph.seconds / steps, s.disk_bytes / 1e9 / steps, s.disk_seconds / steps, s.copy_seconds / steps,
                   s.compute_seconds / steps, s.bound,
                   fmt::format("{:.0f}/{:.0f}/{:.0f}", s.experts_device / steps, s.experts_host / steps, s.experts_disk / steps));
    }
    fmt::print("(per step: GB read from disk and the busy seconds of disk, host->device link and compute; a step takes "
               "about the largest plus what cannot overlap)\n");
    return 0;
}

}  // namespace

void register_plan(CLI::App& app) {
    auto* sub = app.add_subcommand("plan", "Predict memory placement and tokens/s of a model on a machine (measured, given or from a GPU table)");
    auto a = std::make_shared<PlanArgs>();
    sub->add_option("-m,--model", a->model, "Model directory or .gguf file");
    sub->add_option("--preset", a->preset, "A model from its dimensions alone: tiny | small | v3 (DeepSeek-V3 671B)")
        ->check(CLI::IsMember({"tiny", "small", "v3"}));
    sub->add_option("--layers", a->layers, "With --preset: main layers");
    sub->add_option("--dense-layers", a->dense_layers, "With --preset: leading dense layers");
    sub->add_option("--experts", a->experts, "With --preset: routed experts per MoE layer");
    sub->add_option("--mix", a->mix, "With --preset: llama.cpp's per-tensor rules of q4_k_m or q2_k")
        ->check(CLI::IsMember({"q4_k_m", "q2_k"}));
    sub->add_option("--expert-type", a->expert_type, "With --preset and no --mix: routed-expert type");
    sub->add_option("--dense-type", a->dense_type, "With --preset and no --mix: attention / shared / dense type");
    sub->add_option("--embed-type", a->embed_type, "With --preset and no --mix: embedding type");
    sub->add_option("--head-type", a->head_type, "With --preset and no --mix: output head type");
    sub->add_option("--ram", a->ram, "RAM budget (default: 85% of available RAM here)");
    sub->add_option("--resident", a->resident, "CPU runs: none | dense | auto | all, as `run --resident`")->capture_default_str();
    sub->add_option("--vram", a->vram, "GPU memory budget (default: the table's)");
    sub->add_option("--gpu", a->gpu, "A GPU from the table: RTX 4090, RTX 3090, A100, H100, H200");
    sub->add_option("--gpu-gemm", a->gpu_gemm_tflops, "GPU dense BF16 TFLOP/s (instead of the table's)");
    sub->add_option("--gpu-bw", a->gpu_bw_gb, "GPU memory GB/s (instead of the table's)");
    sub->add_option("--pcie", a->pcie_gb, "Host-to-device GB/s (instead of the table's)");
    sub->add_option("--disk", a->disk_gb,
                    "Disk read GB/s, all drives together (default: measured on the model file, sequentially and as expert "
                    "segments)");
    sub->add_option("--disk-seconds", a->disk_seconds, "How long to time the disk")->capture_default_str();
    sub->add_option("--cpu-gemm", a->cpu_gemm_gflops, "CPU GEMM GFLOP/s, with --cpu-bw (default: measured on the model's matrices)");
    sub->add_option("--cpu-bw", a->cpu_bw_gb, "CPU memory GB/s for GEMV, with --cpu-gemm");
    sub->add_option("-b,--batch", a->batch_tokens, "Tokens per prefill step")->capture_default_str();
    sub->add_option("-c,--context", a->context, "Latent-cache positions the memory plan holds per sequence")->capture_default_str();
    sub->add_option("--sequences", a->sequences, "Sequences whose latent caches the memory plan holds")->capture_default_str();
    sub->add_option("--decode-context", a->decode_context, "Cached positions of each decoding sequence")->capture_default_str();
    sub->add_option("--decode", a->decode, "Decode steps per phase")->capture_default_str();
    sub->add_option("--prompt-lengths", a->prompt_lengths, "Prefill lengths")->capture_default_str();
    sub->add_option("--batch-sizes", a->batch_sizes, "Sequences decoded together")->capture_default_str();
    sub->add_option("--compute-profile", a->compute_profile,
                    "Reuse the CPU timings in FILE when it exists, else measure them and write FILE");
    sub->add_option("--routing", a->routing, "Expert counts of a real run (`run --stats-json` or `bench --json` output)");
    sub->add_option("--guess-accuracy", a->guess_accuracy,
                    "Fraction of a layer's needed experts the previous layer's early guess names (default: measured "
                    "by the --routing run, else 0: no credit for speculative reads)");
    sub->add_option("-t,--threads", a->threads, "CPU threads (0 = all)")->capture_default_str();
    sub->add_flag("--bench", a->bench,
                  "Predict what `sluice bench` runs with the same -b, --prompt-lengths, --decode, --batch-sizes, --ram, "
                  "--resident");
    sub->add_flag("--gemm-rate", a->gemm_rate_pass,
                  "With --bench: `bench --json` measures the GEMM rate too (without --no-roofline), which its memory "
                  "plan makes room for");
    sub->add_option("--prefetch", a->prefetch, "Dense segments read ahead, as `run --prefetch`")->capture_default_str();
    sub->add_option("--expert-buffers", a->expert_buffers, "Expert buffers for reads in flight, as `run --expert-buffers`");
    sub->add_flag("--json", a->json, "Print one JSON object");
    add_command(app, sub, [a] { return run_plan(*a); });
}

}  // namespace sluice::cli
