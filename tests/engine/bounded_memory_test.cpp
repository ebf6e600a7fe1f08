// Memory is bounded: a synthetic model ten times larger than the --ram budget, with experts just
// over a 2 MiB multiple (each rounded up to whole huge pages they would take twice their size),
// runs with the process's peak RSS, as the OS counts it, within a few MiB of what was planned —
// whether the budget is filled with an expert cache (auto) or only what is in flight is held
// (none), and with batches of many sequences; a budget too small is refused before any work.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/synth.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

struct ChildResult {
    int exit_code = -1;
    long peak_rss_kib = 0;
};

// Runs the sluice binary with `args`, its output sent to `log`, and reports the child's peak RSS.
ChildResult run_sluice(const std::vector<std::string>& args, const fs::path& log) {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        std::vector<char*> argv;
        argv.push_back(const_cast<char*>(bin));
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        if (!freopen(log.c_str(), "w", stdout) || !freopen(log.c_str(), "a", stderr)) _exit(126);
        execv(bin, argv.data());
        _exit(127);
    }
    int status = 0;
    rusage usage{};
    REQUIRE(wait4(pid, &status, 0, &usage) == pid);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, usage.ru_maxrss};
}

// Experts dominate this model (a small vocabulary keeps the always-resident embedding and
// head tiny), as they do in DeepSeek-V3 itself. An expert is 3 x 704 x 512 BF16 = 2.06 MiB.
fs::path make_model() {
    const fs::path dir = fs::temp_directory_path() / "sluice_bounded_memory_model_2mib";
    if (fs::exists(dir / "config.json")) return dir;
    SynthOptions o;
    o.config = synth_preset("tiny");
    o.config.vocab_size = 1024;
    o.config.hidden_size = 512;
    o.config.n_layers = 6;
    o.config.first_k_dense_replace = 1;
    o.config.intermediate_size = 1024;
    o.config.moe_intermediate_size = 704;
    o.config.n_routed_experts = 64;
    o.config.n_shared_experts = 1;
    o.config.num_experts_per_tok = 4;
    o.config.n_group = 4;
    o.config.topk_group = 2;
    o.config.n_heads = 4;
    o.config.q_lora_rank = 128;
    o.config.kv_lora_rank = 128;
    o.config.qk_nope_head_dim = 32;
    o.config.qk_rope_head_dim = 16;
    o.config.v_head_dim = 32;
    o.config.num_nextn_predict_layers = 0;
    o.output_dir = dir;
    o.weight_dtype = "BF16";
    o.seed = 7;
    write_synthetic_model(o);
    return dir;
}

std::string read_text(const fs::path& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// The JSON object bench --json printed (warnings may share the log).
nlohmann::json bench_json(const fs::path& log) {
    const std::string text = read_text(log);
    const size_t begin = text.find('{'), end = text.rfind('}');
    REQUIRE_MESSAGE(begin != std::string::npos, text);
    return nlohmann::json::parse(text.substr(begin, end - begin + 1));
}

constexpr long kBudgetMiB = 64;
// What the plan leaves out: thread stacks, the allocator's own bookkeeping, small vectors.
// Measured 0.6 MiB; independent of the model.
constexpr long kMarginMiB = 4;

}  // namespace

TEST_CASE("a model 10x the --ram budget fills it with an expert cache and peaks within 4 MiB of it, batches included") {
    const fs::path model = make_model();
    uint64_t model_bytes = 0;
    for (const auto& f : fs::directory_iterator(model)) model_bytes += f.file_size();
    CHECK(model_bytes > 10ull * (uint64_t(kBudgetMiB) << 20));
    for (const char* resident : {"auto", "none"}) {
        CAPTURE(resident);
        const fs::path log = fs::temp_directory_path() / fmt::format("sluice_bounded_memory_{}.log", resident);
        // Decoding 64 sequences together: their latent caches and steps of 64 tokens are planned too.
        const auto r = run_sluice({"bench", "-m", model.string(), "--resident", resident, "--ram",
                                   std::to_string(kBudgetMiB) + "M", "--prompt-lengths", "16", "--decode", "8",
                                   "--batch-sizes", "1,4,64", "-t", "2", "-b", "16", "--json", "--no-roofline"},
                                  log);
        CAPTURE(read_text(log));
        REQUIRE(r.exit_code == 0);
        const auto j = bench_json(log);
        const auto& memory = j.at("memory");
        const long planned_mib = long(memory.at("planned").get<uint64_t>() >> 20);
        const long allocated_mib = long(memory.at("allocated").get<uint64_t>() >> 20);
        MESSAGE(std::string(resident) << ": model " << model_bytes / (1 << 20) << " MiB, budget " << kBudgetMiB << " MiB, planned "
                         << planned_mib << " MiB, allocated " << allocated_mib << " MiB, peak RSS " << r.peak_rss_kib / 1024
                         << " MiB");
        CHECK(memory.at("allocated").get<uint64_t>() <= memory.at("planned").get<uint64_t>());
        CHECK(planned_mib <= kBudgetMiB);
        CHECK(r.peak_rss_kib / 1024 <= planned_mib + kMarginMiB);
        if (std::string(resident) == "auto") {
            // The budget is filled, so an unplanned byte anywhere would show as RSS over it.
            CHECK(j.at("memory_plan_bytes").at("expert_cache_entries").get<int>() > 0);
            CHECK(planned_mib >= kBudgetMiB - 3);
            CHECK(r.peak_rss_kib / 1024 <= kBudgetMiB + kMarginMiB);
        }
    }
}

TEST_CASE("a budget that cannot hold even the in-flight segments is refused before any read") {
    const fs::path model = make_model();
    const fs::path log = fs::temp_directory_path() / "sluice_bounded_memory_refused.log";
    const auto r = run_sluice({"bench", "-m", model.string(), "--resident", "none", "--ram", "4M"}, log);
    CHECK(r.exit_code != 0);
    std::FILE* f = std::fopen(log.c_str(), "r");
    REQUIRE(f);
    std::string text(4096, '\0');
    text.resize(std::fread(text.data(), 1, text.size(), f));
    std::fclose(f);
    CAPTURE(text);
    CHECK(text.find("raise --ram to at least") != std::string::npos);
    CHECK(text.find("phase") == std::string::npos);  // no benchmark ran
}
