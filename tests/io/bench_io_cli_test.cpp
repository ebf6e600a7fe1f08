// `sluice bench-io --json` on a small file: one JSON object with every method's rate and
// latency percentiles (fio left out so the test does not depend on it being installed).
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <sys/wait.h>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace {
struct CommandResult {
    int status = -1;  // as pclose returns it
    std::string out;
};
CommandResult run_capture(const std::string& cmd) {
    CommandResult r;
    FILE* pipe = popen(cmd.c_str(), "r");
    REQUIRE(pipe != nullptr);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
    r.status = pclose(pipe);
    return r;
}
}  // namespace

TEST_CASE("bench-io --json reports a positive rate and ordered percentiles for each method") {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE(bin != nullptr);
    char templ[] = "/tmp/sluice_bench_io_XXXXXX";
    const fs::path dir = mkdtemp(templ);
    const fs::path file = dir / "data.bin";
    {
        std::vector<char> bytes(6 << 20, 'x');
        std::ofstream(file, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    }
    const std::string cmd = std::string(bin) + " bench-io '" + file.string() +
                            "' --bs 256K --qd 4 --seconds 0.5 --rounds 2 --no-fio --keep-cache --json 2>/dev/null";
    const auto [status, out] = run_capture(cmd);
    fs::remove_all(dir);
    REQUIRE(status == 0);
    const auto j = nlohmann::json::parse(out);
    CHECK(j.at("total_bytes").get<uint64_t>() == (6u << 20));
    CHECK(j.at("bs").get<uint64_t>() == 256u * 1024);
    const auto& methods = j.at("methods");
    CHECK(methods.size() == 5);  // io_uring (or its pread fallback), pread pool, read(), two mmap
    for (const auto& m : methods) {
        INFO(m.dump());
        CHECK(m.at("gb_per_s_median").get<double>() > 0);
        CHECK(m.at("gb_per_s_min").get<double>() <= m.at("gb_per_s_max").get<double>());
        CHECK(m.at("p50_us").get<double>() <= m.at("p90_us").get<double>());
        CHECK(m.at("p90_us").get<double>() <= m.at("p99_us").get<double>());
    }
}

TEST_CASE("a bad option value ends with a clear message and exit status 2, not an abort") {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE(bin != nullptr);
    // Values checked by option callbacks while the command line is parsed, before any model opens.
    for (const char* args : {"--attention flash", "--ram 12Q", "--resident sometimes"}) {
        CAPTURE(args);
        const std::string cmd = std::string(bin) + " run -m /nonexistent -p hi " + args + " 2>&1";
        const auto [status, out] = run_capture(cmd);
        CAPTURE(out);
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 2);
        CHECK(out.find("sluice: invalid input:") != std::string::npos);
        CHECK(out.find("terminate called") == std::string::npos);
    }
}
