// The performance model's timeline: a step streams what its placement does not hold, overlaps
// reads, copies and compute the way the streamer does, and predicts expert reuse from uniform or
// measured routing. Checked against sums worked out by hand on DeepSeek-V3 planned from its
// dimensions (Q4_K throughout, so every expert has the same bytes).
#include <doctest/doctest.h>

#include <cmath>

#include "core/error.hpp"
#include "engine/perf_model.hpp"
#include "engine/shape_model.hpp"

using namespace sluice;

namespace {

const OpenModel& v3() {
    static const auto m = [] {
        ShapeModelOptions o;
        o.preset = "v3";
        return open_shape_model(o);  // Q4_K experts and dense, Q6_K head
    }();
    return *m;
}

constexpr int kMoeLayers = 58;
constexpr double kInstant = 1e18;  // a rate that makes compute free

uint64_t expert_bytes() { return v3().plan.layers[10].experts[0].bytes(); }
uint64_t all_dense_bytes() {
    uint64_t b = 0;
    for (const auto& l : v3().plan.layers) b += l.dense.bytes();
    return b;
}

Placement cpu_streaming(int64_t cached_experts) {
    Placement p;
    p.dense.assign(61, Tier::disk);
    p.host_expert_entries = cached_experts;
    return p;
}

}  // namespace

TEST_CASE("with compute free, a decode step takes the bytes it must read over the disk rate") {
    const auto compute = roofline_times(v3(), kInstant, kInstant, 0, "instant");
    const double rate = 7e9;
    for (int64_t cached : {int64_t(0), int64_t(58 * 256 / 4)}) {
        CAPTURE(cached);
        PerfModel model(v3(), cpu_streaming(cached), *compute, Routing::uniform(v3().layout), LinkRates{rate, 0});
        const StepPrediction s = model.step(StepShape{1, 1, 100, 1});
        // Each MoE layer needs top_k = 8 of 256; a cache of a quarter of them serves a quarter.
        const double missing = 8.0 * kMoeLayers * (1.0 - double(cached) / (58.0 * 256));
        CHECK(s.experts_needed == doctest::Approx(8.0 * kMoeLayers));
        CHECK(s.experts_disk == doctest::Approx(missing));
        CHECK(s.experts_host == doctest::Approx(8.0 * kMoeLayers - missing));
        // Two dense buffers over 61 streamed segments keep none of them from one step to the next.
        const double bytes = double(all_dense_bytes()) + missing * double(expert_bytes());
        CHECK(s.disk_bytes == doctest::Approx(bytes));
        CHECK(s.seconds == doctest::Approx(bytes / rate).epsilon(1e-6));
        CHECK(s.bound == "disk");
    }
}

TEST_CASE("with everything in memory a step is the sum of its compute, in the order the forward pass runs it") {
    const auto compute = roofline_times(v3(), 50e9, 1e12, 0, "cpu");
    Placement p;
    p.dense.assign(61, Tier::host);
    p.host_expert_entries = 58 * 256;
    PerfModel model(v3(), p, *compute, Routing::uniform(v3().layout), LinkRates{0, 0});
    const StepPrediction s = model.step(StepShape{1, 1, 300, 1});
    double expected = compute->head(1);
    for (int l = 0; l < 61; ++l) {
        expected += compute->dense_part(l, 1, 1, 300);
        if (l >= 3) expected += compute->router(l, 1) + 8 * compute->expert(l, 1) + compute->shared_expert(l, 1);
    }
    CHECK(s.disk_bytes == 0);
    CHECK(s.seconds == doctest::Approx(expected).epsilon(1e-9));
    CHECK(s.compute_seconds == doctest::Approx(expected).epsilon(1e-9));
    CHECK(s.bound == "compute");
    // The decode step reads every weight once at 50 GB/s: about 37B active parameters' bytes.
    CHECK(s.seconds > 0.3);
    CHECK(s.seconds < 0.6);
}

TEST_CASE("reads and compute overlap: a step lasts at least the busier of the two and at most their sum") {
    const auto compute = roofline_times(v3(), 30e9, 1e12, 0, "cpu");
    for (double rate : {1e9, 5e9, 20e9, 80e9}) {
        PerfModel model(v3(), cpu_streaming(58 * 64), *compute, Routing::uniform(v3().layout), LinkRates{rate, 0});
        for (int64_t tokens : {int64_t(1), int64_t(64), int64_t(512)}) {
            const StepPrediction s = model.step(StepShape{tokens, 1, 0, 1});
            CAPTURE(rate);
            CAPTURE(tokens);
            CHECK(s.seconds >= std::max(s.disk_seconds, s.compute_seconds) * (1 - 1e-9));
            CHECK(s.seconds <= (s.disk_seconds + s.compute_seconds) * (1 + 1e-9));
        }
    }
}

TEST_CASE("measured routing concentrated on a quarter of the experts is served by a cache uniform routing mostly misses") {
    const auto& d = v3().layout;
    RoutingCounts c;
    c.n_layers = 61;
    c.n_experts = 256;
    c.top_k = 8;
    c.steps = 1000;
    c.tokens = 1000;
    c.step_widths = {{1, 1000}};
    c.needed.assign(61 * 256, 0);
    for (int l = 3; l < 61; ++l)
        for (int e = 0; e < 64; ++e) c.needed[size_t(l * 256 + e)] = 125;  // 64 experts x 1/8 = top_k 8 per token
    const auto compute = roofline_times(v3(), kInstant, kInstant, 0, "instant");
    const Placement p = cpu_streaming(58 * 64);
    PerfModel measured(v3(), p, *compute, Routing::measured(d, c, "test"), LinkRates{7e9, 0});
    PerfModel uniform(v3(), p, *compute, Routing::uniform(d), LinkRates{7e9, 0});
    const StepPrediction a = measured.step(StepShape{1, 1, 0, 1});
    const StepPrediction b = uniform.step(StepShape{1, 1, 0, 1});
    CHECK(a.experts_needed == doctest::Approx(8.0 * kMoeLayers));
    CHECK(a.experts_disk == doctest::Approx(0).epsilon(1e-9));
    CHECK(b.experts_disk == doctest::Approx(8.0 * kMoeLayers * 0.75));
    // A 16-token step needs 1 - (1 - 1/8)^16 = 88% of the hot experts, all of them cached.
    const StepPrediction wide = measured.step(StepShape{16, 16, 0, 16});
    CHECK(wide.experts_needed == doctest::Approx(kMoeLayers * 64 * (1 - std::pow(7.0 / 8, 16))));
    CHECK(wide.experts_disk == doctest::Approx(0).epsilon(1e-9));
    // Counts recorded on another shape are refused.
    c.n_experts = 128;
    CHECK_THROWS_AS(Routing::measured(d, c, "test"), Error);
}

TEST_CASE("on a GPU, experts held in RAM cross the link, which bounds a step whose disk and compute are fast") {
    const auto compute = roofline_times(v3(), kInstant, kInstant, 0, "instant");
    Placement p;
    p.gpu = true;
    p.dense.assign(61, Tier::device);
    p.head = Tier::device;
    p.host_expert_entries = 58 * 256;
    const double link = 25e9;
    PerfModel model(v3(), p, *compute, Routing::uniform(v3().layout), LinkRates{kInstant, 0, link});
    const StepPrediction s = model.step(StepShape{1, 1, 0, 1});
    const double bytes = 8.0 * kMoeLayers * double(expert_bytes());
    CHECK(s.disk_bytes == 0);
    CHECK(s.copy_bytes == doctest::Approx(bytes));
    CHECK(s.seconds == doctest::Approx(bytes / link).epsilon(1e-6));
    CHECK(s.bound == "pcie");
    // The same experts on disk: read, then copied as they land; the slower of the two sets the pace.
    p.host_expert_entries = 0;
    PerfModel from_disk(v3(), p, *compute, Routing::uniform(v3().layout), LinkRates{7e9, 0, link});
    const StepPrediction t = from_disk.step(StepShape{1, 1, 0, 1});
    CHECK(t.disk_bytes == doctest::Approx(bytes));
    CHECK(t.copy_bytes == doctest::Approx(bytes));
    CHECK(t.seconds == doctest::Approx(bytes / 7e9).epsilon(1e-6));
    CHECK(t.bound == "disk");
}

TEST_CASE("a prompt runs in chunks from position 0 and a decode phase in steps of one token per sequence") {
    const auto compute = roofline_times(v3(), 30e9, 1e12, 0, "cpu");
    PerfModel model(v3(), cpu_streaming(0), *compute, Routing::uniform(v3().layout), LinkRates{7e9, 0});
    const PhasePrediction pre = model.prefill("prefill", 2000, 512);
    CHECK(pre.steps == 4);
    CHECK(pre.tokens == 2000);
    CHECK(pre.seconds == doctest::Approx(model.step({512, 1, 0, 1}).seconds + model.step({512, 1, 512, 1}).seconds +
                                         model.step({512, 1, 1024, 1}).seconds + model.step({464, 1, 1536, 1}).seconds));
    const PhasePrediction dec = model.decode("decode x4", 4, 100, 10);
    CHECK(dec.steps == 10);
    CHECK(dec.tokens == 40);
    CHECK(dec.seconds == doctest::Approx(10 * model.step({4, 4, 105, 4}).seconds));
    // A wider step reads more distinct experts: 1 - (1 - 8/256)^t of each layer's 256.
    CHECK(model.step({4, 4, 100, 4}).experts_needed == doctest::Approx(kMoeLayers * 256 * (1 - std::pow(248.0 / 256, 4))));
}

TEST_CASE("early guesses read in the disk's idle time save a fraction of the misses equal to their accuracy") {
    // Dense parts resident, compute slow enough that the disk idles through each layer's attention.
    const auto compute = roofline_times(v3(), 20e9, 1e12, 0, "cpu");
    Placement p;
    p.dense.assign(61, Tier::host);
    p.host_expert_entries = 0;
    Routing none = Routing::uniform(v3().layout);
    Routing perfect = none;
    perfect.guess_accuracy = 1.0;
    Routing half = none;
    half.guess_accuracy = 0.5;
    const StepShape decode{1, 1, 0, 1};
    const StepPrediction a = PerfModel(v3(), p, *compute, none, LinkRates{7e9, 0, 0}).step(decode);
    const StepPrediction b = PerfModel(v3(), p, *compute, half, LinkRates{7e9, 0, 0}).step(decode);
    const StepPrediction c = PerfModel(v3(), p, *compute, perfect, LinkRates{7e9, 0, 0}).step(decode);
    CHECK(b.seconds < a.seconds);
    CHECK(c.seconds < b.seconds);
    // Right guesses replace reads (the bytes stay those of the misses); wrong ones add reads.
    CHECK(c.disk_bytes == doctest::Approx(a.disk_bytes).epsilon(1e-9));
    CHECK(b.disk_bytes > a.disk_bytes);
    // Never faster than the compute alone.
    CHECK(c.seconds >= c.compute_seconds * (1 - 1e-9));
}

TEST_CASE("a ring of dense buffers keeps every streamed segment between steps only when it holds them all") {
    const auto compute = roofline_times(v3(), kInstant, kInstant, 0, "instant");
    Placement p = cpu_streaming(58 * 256);  // every expert in memory: only dense segments are read
    p.dense.assign(61, Tier::host);
    for (int l = 10; l < 13; ++l) p.dense[size_t(l)] = Tier::disk;  // three streamed segments
    const double three = double(v3().plan.layers[10].dense.bytes() * 3);
    for (int buffers : {2, 3, 4}) {
        CAPTURE(buffers);
        p.dense_buffers = buffers;
        const PerfModel model(v3(), p, *compute, Routing::uniform(v3().layout), LinkRates{7e9, 0});
        CHECK(model.step(StepShape{1, 1, 0, 1}).disk_bytes == doctest::Approx(buffers >= 3 ? 0.0 : three));
        // A run's first step reads them whatever the ring.
        CHECK(model.step(StepShape{1, 1, 0, 1, true}).disk_bytes == doctest::Approx(three));
    }
    // On a GPU the device's dense slots decide the copies, the streamer's ring the reads.
    p.gpu = true;
    p.head = Tier::device;
    p.dense_buffers = 3;
    p.device_dense_slots = 2;
    p.device_expert_entries = 58 * 256;
    p.host_expert_entries = 0;
    for (auto& t : p.dense) t = t == Tier::host ? Tier::device : t;
    const PerfModel gpu(v3(), p, *compute, Routing::uniform(v3().layout), LinkRates{7e9, 0, 25e9});
    const StepPrediction s = gpu.step(StepShape{1, 1, 0, 1});
    CHECK(s.disk_bytes == doctest::Approx(0.0));
    CHECK(s.copy_bytes == doctest::Approx(three));
}

TEST_CASE("a pool of expert buffers that also takes the step's reads caches one layer's misses fewer entries than it has") {
    const auto compute = roofline_times(v3(), kInstant, kInstant, 0, "instant");
    const double n = 58.0 * 256;
    for (int64_t buffers : {int64_t(16), int64_t(2000), int64_t(58 * 256)}) {
        CAPTURE(buffers);
        Placement p = cpu_streaming(buffers);
        const PerfModel fixed(v3(), p, *compute, Routing::uniform(v3().layout), LinkRates{7e9, 0});
        p.host_pool = true;
        const PerfModel pool(v3(), p, *compute, Routing::uniform(v3().layout), LinkRates{7e9, 0});
        for (int tokens : {1, 16}) {
            CAPTURE(tokens);
            const StepShape shape{tokens, tokens, 0, tokens};
            // A layer needs 256 (1 - (1 - 8/256)^t) experts; (1 - B/N) of them are misses.
            const double per_layer = 256 * (1 - std::pow(248.0 / 256, double(tokens)));
            const double misses = per_layer * (1 - double(buffers) / n);
            const double entries = std::max(0.0, double(buffers) - misses);
            CHECK(fixed.step(shape).experts_host == doctest::Approx(kMoeLayers * per_layer * double(buffers) / n));
            CHECK(pool.step(shape).experts_host == doctest::Approx(kMoeLayers * per_layer * entries / n));
        }
    }
}
