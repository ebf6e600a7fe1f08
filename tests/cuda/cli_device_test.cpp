// `sluice ... --device cuda` end to end on the emulated device: the real command line, runtime,
// planners, streamer and DeviceWeights in the binary a user runs (sluice_emu is sluice linked
// against cudaemu/). Logits against the same binary's CPU backend; the device budget against the
// emulated allocator's peak; the timeline's invariants; clear errors for budgets that cannot work.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/synth.hpp"
#include "engine/trace.hpp"
#include "formats/npy.hpp"
#include "tests/engine/trace_check.hpp"
#include "tests/test_data.hpp"

using namespace sluice;
using sluice::test::fixture;
namespace fs = std::filesystem;

namespace {

struct Run {
    int exit_code = -1;
    long peak_rss_kib = 0;
    std::string output;
};

// sluice_emu with `args` (and extra environment), its stdout and stderr together.
Run run(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    const char* bin = std::getenv("SLUICE_EMU_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_EMU_BIN is not set");
    const fs::path log = fs::temp_directory_path() / ("sluice_cli_device_" + std::to_string(::getpid()) + ".log");
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
        std::vector<char*> argv{const_cast<char*>(bin)};
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        if (!freopen(log.c_str(), "w", stdout) || !freopen(log.c_str(), "a", stderr)) _exit(126);
        alarm(240);  // nothing may hang: a stuck run dies and fails the test
        execv(bin, argv.data());
        _exit(127);
    }
    int status = 0;
    rusage usage{};
    REQUIRE(wait4(pid, &status, 0, &usage) == pid);
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    fs::remove(log);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), usage.ru_maxrss, text.str()};
}

uint64_t number_after(const std::string& text, const std::string& pattern) {
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_search(text, m, std::regex(pattern)), "no match for " << pattern << " in:\n" << text);
    return std::stoull(m[1]);
}

std::string generated_ids(const std::string& text) {
    std::smatch m;
    REQUIRE(std::regex_search(text, m, std::regex("generated ids: ([0-9,]*)")));
    return m[1];
}

double max_abs_diff(const NpyArray& a, const NpyArray& b) {
    REQUIRE(a.data.size() == b.data.size());
    double m = 0;
    for (size_t i = 0; i < a.data.size(); ++i) m = std::max(m, double(std::fabs(a.data[i] - b.data[i])));
    return m;
}

double max_abs(const NpyArray& a) {
    double m = 0;
    for (float x : a.data) m = std::max(m, double(std::fabs(x)));
    return m;
}

const std::vector<std::string> kPrompt = {"--prompt-ids", "1,17,42,7,99,3,250,11", "-n", "6"};

std::vector<std::string> run_args(const std::string& model, const std::vector<std::string>& more) {
    std::vector<std::string> a = {"run", "-m", model};
    a.insert(a.end(), kPrompt.begin(), kPrompt.end());
    a.insert(a.end(), more.begin(), more.end());
    return a;
}

// The smallest --vram the device plan accepts for `model` (from the refusal of 1 KiB).
uint64_t minimum_vram(const std::string& model, std::vector<std::string> more = {}) {
    more.insert(more.end(), {"--device", "cuda", "--vram", "1K", "--resident", "none"});
    const Run r = run(run_args(model, more));
    CHECK(r.exit_code != 0);
    CHECK(r.output.find("raise --vram") != std::string::npos);
    return number_after(r.output, R"(raise --vram to at least [0-9.]+ GiB \(([0-9]+) bytes\))");
}

}  // namespace

TEST_CASE("--device cuda at the smallest --vram streams every layer through the device slots and gives the CPU's "
          "logits and tokens, with the emulated allocator's peak under the budget") {
    for (const std::string name : {"hf_tiny_v3", "hf_tiny_v2lite", "llamacpp/hf_tiny_v3.Q4_K_M.gguf"}) {
        CAPTURE(name);
        const std::string model = fixture(name);
        const fs::path cpu_npy = fs::temp_directory_path() / "sluice_cli_cpu.npy";
        const fs::path dev_npy = fs::temp_directory_path() / "sluice_cli_dev.npy";
        const Run cpu = run(run_args(model, {"--device", "cpu", "--exact-dot", "--logits-out", cpu_npy.string()}));
        REQUIRE_MESSAGE(cpu.exit_code == 0, cpu.output);
        const uint64_t vram = minimum_vram(model);
        // Slow, jittered copies and an expert pool of two on the host: every read and copy waits its turn.
        const Run dev = run(run_args(model, {"--device", "cuda", "--exact-dot", "--vram", std::to_string(vram), "--resident",
                                             "none", "--expert-buffers", "2", "--stats", "--logits-out", dev_npy.string()}),
                            {"CUDAEMU_COPY_GBPS=0.5", "CUDAEMU_JITTER_US=30"});
        REQUIRE_MESSAGE(dev.exit_code == 0, dev.output);
        CHECK(dev.output.find("0 of ") != std::string::npos);  // no dense segment resident: all streamed
        const uint64_t peak = number_after(dev.output, R"(allocator peak ([0-9]+) bytes)");
        MESSAGE(name << ": --vram " << vram << ", allocator peak " << peak);
        CHECK(peak <= vram);
        CHECK(generated_ids(dev.output) == generated_ids(cpu.output));
        const NpyArray a = read_npy_f32(cpu_npy.string()), b = read_npy_f32(dev_npy.string());
        CHECK(max_abs_diff(a, b) <= 2e-5 * max_abs(a));
        fs::remove(cpu_npy);
        fs::remove(dev_npy);
    }
}

TEST_CASE("--trace of a --device cuda run: no expert computed before its copy ended, no host buffer refilled during "
          "its copy, reads while the device computes") {
    const std::string model = fixture("hf_tiny_v3");
    const fs::path trace_path = fs::temp_directory_path() / "sluice_cli_device_trace.json";
    const uint64_t vram = minimum_vram(model);
    const Run r = run(run_args(model, {"--device", "cuda", "--vram", std::to_string(vram), "--resident", "none",
                                       "--expert-buffers", "2", "--trace", trace_path.string()}),
                      {"CUDAEMU_COPY_GBPS=0.5"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    std::ifstream in(trace_path);
    const auto trace = nlohmann::json::parse(in);
    const auto spans = test::trace_spans(trace);
    const int64_t tolerance = trace["otherData"]["device_clock_uncertainty_us"];
    CHECK(test::check_data_before_compute(spans, int(Trace::Track::copies), "copy expert", int(Trace::Track::device),
                                          "expert") > 0);
    CHECK(test::check_no_refill_during_copy(spans, int(Trace::Track::copies), int(Trace::Track::reads), tolerance) > 0);
    CHECK(test::reads_overlap_compute(spans, int(Trace::Track::reads), int(Trace::Track::device)));
    fs::remove(trace_path);
}

TEST_CASE("a --vram below the minimum, or a device smaller than --vram, ends the run with a clear error") {
    const std::string model = fixture("hf_tiny_v3");
    const uint64_t vram = minimum_vram(model);
    const Run small = run(run_args(model, {"--device", "cuda", "--vram", std::to_string(vram - 1)}));
    CHECK(small.exit_code != 0);
    CHECK(small.output.find("raise --vram to at least") != std::string::npos);
    // The plan fits --vram, but the device has less: the allocation that fails is named.
    const Run device = run(run_args(model, {"--device", "cuda", "--vram", "256M"}), {"CUDAEMU_DEVICE_BYTES=8M"});
    CHECK(device.exit_code != 0);
    CHECK(device.output.find("device memory") != std::string::npos);
    CHECK(device.output.find("out of memory") != std::string::npos);
}

TEST_CASE("a model several times --ram and --vram streams with the host's peak RSS under --ram + --vram + a margin") {
    // On the emulated device, device memory is host memory: the process holds both budgets.
    const fs::path dir = fs::temp_directory_path() / "sluice_cli_device_model";
    if (!fs::exists(dir / "config.json")) {
        SynthOptions o;
        o.config = synth_preset("tiny");
        o.config.vocab_size = 512;
        o.config.hidden_size = 384;
        o.config.n_layers = 6;
        o.config.first_k_dense_replace = 1;
        o.config.intermediate_size = 512;
        o.config.moe_intermediate_size = 384;
        o.config.n_routed_experts = 64;
        o.config.n_shared_experts = 1;
        o.config.num_experts_per_tok = 4;
        o.config.n_group = 4;
        o.config.topk_group = 2;
        o.config.num_nextn_predict_layers = 0;
        o.output_dir = dir;
        o.weight_dtype = "BF16";
        o.seed = 3;
        write_synthetic_model(o);
    }
    uint64_t model_bytes = 0;
    for (const auto& f : fs::directory_iterator(dir)) model_bytes += f.file_size();
    const std::vector<std::string> shape = {"-c", "64", "-b", "8"};
    const uint64_t vram = minimum_vram(dir.string(), shape) + (uint64_t(4) << 20);
    const uint64_t ram = uint64_t(32) << 20;
    const long margin_mib = 48;
    MESSAGE("model " << (model_bytes >> 20) << " MiB, --ram " << (ram >> 20) << " MiB, --vram " << (vram >> 20) << " MiB");
    CHECK(model_bytes > 3 * (ram + vram));
    const Run r = run({"run", "-m", dir.string(), "--prompt-ids", "1,17,42,7,99,3,250,11", "-n", "6", "-c", "64", "-b", "8",
                       "--device", "cuda", "--ram", std::to_string(ram), "--vram", std::to_string(vram), "--resident",
                       "none", "--stats"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    const uint64_t peak = number_after(r.output, R"(allocator peak ([0-9]+) bytes)");
    CHECK(peak <= vram);
    MESSAGE("peak RSS " << r.peak_rss_kib / 1024 << " MiB, device allocator peak " << (peak >> 20) << " MiB");
    CHECK(r.peak_rss_kib / 1024 <= long((ram + vram) >> 20) + margin_mib);
}

TEST_CASE("bench-io --to-device measures each stage and the pipeline, and the pipeline is no faster than its slowest "
          "stage by more than the measurement's noise") {
    const std::string file = fixture("llamacpp/hf_small_v3.Q4_K_M.gguf");
    // Copies modelled at 2 GB/s: the device side is a real stage of the pipeline here.
    const Run r = run({"bench-io", file, "--to-device", "cuda", "--bs", "256K", "--qd", "4", "--rounds", "1", "--seconds",
                       "0.5", "--keep-cache", "--json"},
                      {"CUDAEMU_COPY_GBPS=2", "CUDAEMU_COPY_LATENCY_US=20"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    const auto j = nlohmann::json::parse(r.output.substr(r.output.rfind("\n{") + 1));
    std::map<std::string, double> rate;
    for (const auto& s : j.at("stages")) rate[s.at("stage").get<std::string>()] = s.at("gb_per_s_median").get<double>();
    MESSAGE(j.dump());
    REQUIRE(rate.count("disk -> pinned host"));
    REQUIRE(rate.count("pinned host -> device"));
    REQUIRE(rate.count("pipelined disk -> device"));
    CHECK(rate["disk -> pinned host"] > 0);
    CHECK(rate["pinned host -> device"] > 0);
    CHECK(rate["pinned host -> device"] <= 2.2);  // the modelled copy rate bounds the copy stage
    CHECK(rate["pipelined disk -> device"] > 0);
    CHECK(rate["pipelined disk -> device"] <= 2.2);  // every byte of the pipeline is copied too
    CHECK(j.at("cufile").get<std::string>() != "measured");  // no libcufile on the emulated device
}
