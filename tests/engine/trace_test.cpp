// --trace on the CPU path: a streamed run's timeline holds every read, wait and compute span, and
// the pipeline's promises hold on it (no expert computed before its read ended; reads run while
// compute does). The device path's timeline is checked in tests/cuda/forward_test.cpp.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/runtime.hpp"
#include "tests/engine/trace_check.hpp"
#include "tests/test_data.hpp"

using namespace sluice;
using sluice::test::fixture;
namespace fs = std::filesystem;

namespace {

nlohmann::json traced_run(const std::string& model, const RuntimeOptions& base, const fs::path& path) {
    RuntimeOptions ro = base;
    ro.device = "cpu";
    const RunShape shape{1, 64, 8, 0};
    ro.shapes = {shape};
    ro.verbose = false;
    ro.trace_path = path.string();
    ThreadPool pool(2);
    auto rt = make_runtime(model, ro);
    ForwardOptions fo{shape};
    {
        auto forward = rt->make_forward(fo, pool);
        std::vector<float> logits(static_cast<size_t>(rt->layout().vocab));
        const std::vector<int32_t> prompt = {1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41};
        forward->forward(prompt, false, logits.data());
        for (int i = 0; i < 3; ++i) {
            const int32_t next = int32_t(2 + i * 7);
            forward->forward({&next, 1}, false, logits.data());
        }
    }
    rt->finish();
    std::ifstream in(path);
    REQUIRE(in);
    return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("a streamed run's trace is Chrome trace-event JSON with every read, wait and compute span") {
    const fs::path path = fs::temp_directory_path() / "sluice_trace_test.json";
    RuntimeOptions ro;
    ro.resident = ResidentMode::none;
    ro.ram_budget_bytes = uint64_t(1) << 30;
    const auto trace = traced_run(fixture("hf_tiny_v3"), ro, path);
    const auto spans = test::trace_spans(trace);
    std::map<std::string, int> names;
    for (const auto& s : spans) ++names[s.name];
    CHECK(names["read dense"] > 0);
    CHECK(names["read expert"] > 0);
    CHECK(names["attention"] == 5 * 3);  // 2 prompt chunks + 3 decode steps, x 3 layers
    CHECK(names["head"] == 4);           // the first chunk wants no logits
    CHECK(names["expert"] > 0);
    // The viewer's metadata names each track.
    int named = 0;
    for (const auto& e : trace["traceEvents"]) named += e["ph"] == "M" && e["name"] == "thread_name";
    CHECK(named == 5);
    const int checked = test::check_data_before_compute(spans, int(Trace::Track::reads), "read expert",
                                                        int(Trace::Track::compute), "expert");
    CHECK(checked > 0);
    fs::remove(path);
}

TEST_CASE("with reads slower than compute, the trace shows reads in flight while layers compute") {
    const fs::path path = fs::temp_directory_path() / "sluice_trace_slow.json";
    RuntimeOptions ro;
    ro.resident = ResidentMode::none;
    ro.ram_budget_bytes = uint64_t(1) << 30;
    ro.io_rate_cap = 20e6;  // 20 MB/s: each read takes milliseconds, while layer L+1's is issued before L computes
    const auto spans = test::trace_spans(traced_run(fixture("hf_tiny_v3"), ro, path));
    CHECK(test::reads_overlap_compute(spans, int(Trace::Track::reads), int(Trace::Track::compute)));
    CHECK(test::check_data_before_compute(spans, int(Trace::Track::reads), "read expert", int(Trace::Track::compute),
                                          "expert") > 0);
    fs::remove(path);
}

TEST_CASE("a trace path that cannot be written is a clear error naming it") {
    Trace t;
    t.add(Trace::Track::compute, "x", 0, 1);
    try {
        t.write("/nonexistent-dir/trace.json");
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::io);
        CHECK(std::string(e.what()).find("/nonexistent-dir/trace.json") != std::string::npos);
    }
}
