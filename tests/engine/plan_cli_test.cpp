// `sluice plan` from the command line on DeepSeek-V3 known from its dimensions alone: every rate
// comes from a flag or the GPU table (nothing here is timed), so the answers are fixed numbers of
// the model; and the clear refusals (a --vram below the minimum, a shapes-only model with no disk rate).
#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "run_command.hpp"

namespace {

using sluice::test::CommandResult;

CommandResult run(const std::string& args) {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    return sluice::test::run_command(fmt::format("'{}' plan {} 2>&1", bin, args));
}

}  // namespace

TEST_CASE("V3 at q4_k_m on an RTX 4090 with 64 GiB and one 7 GB/s drive: placement, sources and a disk-bound decode") {
    const CommandResult r = run("--preset v3 --mix q4_k_m --gpu 'RTX 4090' --ram 64G --disk 7 --json");
    REQUIRE_MESSAGE(r.status == 0, r.out);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j.at("format") == "shapes");
    CHECK(j.at("layers") == 61);
    CHECK(j.at("bytes").at("total").get<double>() == doctest::Approx(404.7e9).epsilon(0.002));
    const auto& p = j.at("placement");
    CHECK(p.at("dense_vram") == 61);
    CHECK(p.at("head") == "vram");
    CHECK(p.at("mla_cache") == "vram");
    CHECK(p.at("experts_vram").get<int>() > 300);
    // RAM is the run's host plan: 64 GiB less 11.2 GiB (the dense parts it keeps resident, globals,
    // latent cache, activations) in expert buffers of 27.2 MiB.
    CHECK(p.at("experts_ram").get<int>() > 1900);
    std::map<std::string, std::string> source;
    for (const auto& rate : j.at("rates")) source[rate.at("name")] = rate.at("source");
    CHECK(source.at("disk") == "flag");
    CHECK(source.at("vram").find("table: RTX 4090") == 0);
    CHECK(source.at("host->device").find("PCIe 4.0") != std::string::npos);
    const auto& decode = j.at("phases").at(0);
    CHECK(decode.at("phase") == "decode");
    CHECK(decode.at("bound") == "disk");
    // Each token needs 8 x 58 experts; those neither VRAM nor RAM holds come from disk at 7 GB/s.
    const double per_step = decode.at("disk_bytes").get<double>() / decode.at("steps").get<double>();
    CHECK(decode.at("tokens_per_s").get<double>() < 7e9 / per_step);
    CHECK(decode.at("tokens_per_s").get<double>() > 0.8 * 7e9 / per_step);
}

TEST_CASE("sluice plan refuses what cannot work, naming what would") {
    const CommandResult small = run("--preset v3 --mix q4_k_m --gpu 'RTX 4090' --vram 1G --ram 64G --disk 7");
    CHECK(small.status != 0);
    CHECK_MESSAGE(small.out.find("raise --vram to at least") != std::string::npos, small.out);
    const CommandResult no_disk = run("--preset v3 --mix q4_k_m --ram 32G --cpu-bw 50 --cpu-gemm 500");
    CHECK(no_disk.status != 0);
    CHECK_MESSAGE(no_disk.out.find("give --disk") != std::string::npos, no_disk.out);
    const CommandResult unknown = run("--preset v3 --gpu 'GTX 480' --ram 64G --disk 7");
    CHECK(unknown.status != 0);
    CHECK_MESSAGE(unknown.out.find("RTX 4090") != std::string::npos, unknown.out);
    const CommandResult both = run("-m nowhere.gguf --preset v3");
    CHECK(both.status != 0);
}
