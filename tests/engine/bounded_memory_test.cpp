// Memory is bounded: a synthetic model several times larger than the --ram budget runs with
// --resident none and the process's peak RSS, as the OS counts it, stays under the budget plus
// a stated margin; a budget too small is refused before any work.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

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
// head tiny), as they do in DeepSeek-V3 itself.
fs::path make_model() {
    const fs::path dir = fs::temp_directory_path() / "sluice_bounded_memory_model";
    if (fs::exists(dir / "config.json")) return dir;
    SynthOptions o;
    o.config = synth_preset("tiny");
    o.config.vocab_size = 1024;
    o.config.hidden_size = 512;
    o.config.n_layers = 6;
    o.config.first_k_dense_replace = 1;
    o.config.intermediate_size = 1024;
    o.config.moe_intermediate_size = 512;
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

}  // namespace

TEST_CASE("a model 7x the --ram budget streams with peak RSS under the budget plus 48 MiB") {
    const fs::path model = make_model();
    uint64_t model_bytes = 0;
    for (const auto& f : fs::directory_iterator(model)) model_bytes += f.file_size();
    const long budget_mib = 64;
    // The margin covers what the budget does not plan: the binary and its libraries, thread
    // stacks, the allocator's slack, the tokenizer-free CLI itself.
    const long margin_mib = 48;
    CHECK(model_bytes > 7ull * (uint64_t(budget_mib) << 20));

    const fs::path log = fs::temp_directory_path() / "sluice_bounded_memory.log";
    const auto r = run_sluice({"bench", "-m", model.string(), "--resident", "none", "--ram", std::to_string(budget_mib) + "M",
                               "--prompt-lengths", "16", "--decode", "8", "--batch-sizes", "1,4", "-t", "2", "-b", "16"},
                              log);
    CAPTURE(log.string());
    REQUIRE(r.exit_code == 0);
    MESSAGE("model " << model_bytes / (1 << 20) << " MiB, budget " << budget_mib << " MiB, peak RSS "
                     << r.peak_rss_kib / 1024 << " MiB");
    CHECK(r.peak_rss_kib / 1024 <= budget_mib + margin_mib);
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
