// The device memory planner keeps on the device what saves the most bytes moved per byte of VRAM,
// sizes its staging slots from the real segments, never plans past --vram, and refuses a budget
// below the minimum naming the smallest --vram that works. On the tiny fixture and on DeepSeek-V3
// planned from its dimensions alone (no file).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/device_planner.hpp"
#include "engine/device_weights.hpp"
#include "engine/model_loader.hpp"
#include "engine/shape_model.hpp"

using namespace sluice;

namespace {

constexpr uint64_t GiB = uint64_t(1) << 30, MiB = uint64_t(1) << 20;

const OpenModel& v3_q4_k_m() {
    static const auto m = [] {
        ShapeModelOptions o;
        o.preset = "v3";
        o.mix = "q4_k_m";
        return open_shape_model(o);
    }();
    return *m;
}

const OpenModel& tiny() {
    static const auto m = [] {
        const char* d = std::getenv("SLUICE_TEST_DATA");
        REQUIRE_MESSAGE(d, "SLUICE_TEST_DATA is not set");
        return open_model(std::string(d) + "/hf_tiny_v3");
    }();
    return *m;
}

DeviceRequest request(uint64_t vram, int64_t context = 4096) {
    DeviceRequest r;
    r.vram_budget_bytes = vram;
    r.context = context;
    r.batch_tokens = 1;
    r.activation_bytes = 512 * MiB;
    return r;
}

uint64_t largest_expert(const ModelPlan& p) {
    uint64_t b = 0;
    for (const auto& l : p.layers)
        for (const auto& e : l.experts) b = std::max(b, e.bytes());
    return b;
}

// A segment streamed through a device slot takes the slot DeviceWeights sizes for it (the host
// buffer it is copied from rounds each extent out to 4 KiB); kept resident, the bytes it is read as.
uint64_t slot_of(const Segment& s) { return DeviceWeights::slot_bytes(s); }
uint64_t resident_of(const Segment& s) { return DeviceWeights::resident_segment_bytes(s); }

uint64_t round_up(uint64_t b, uint64_t a) { return (b + a - 1) / a * a; }

}  // namespace

TEST_CASE("DeepSeek-V3 Q4_K_M on 24 GiB: MLA cache, every dense segment and the head resident, experts fill the rest") {
    const auto& m = v3_q4_k_m();
    const DevicePlan p = plan_device_memory(m.layout, m.plan, request(24 * GiB));
    CAPTURE(p.describe());
    CHECK(p.mla_on_device);
    CHECK(p.mla_cache_bytes == round_up(uint64_t(4096) * 576 * 4 * 61, 256));
    CHECK(p.n_dense_resident() == 61);
    CHECK(p.dense_slots == 0);  // nothing dense is streamed
    CHECK(p.head_resident);
    // 2 x top_k slots, each the largest expert (a Q6_K down projection's layer: 2 x Q4_K + Q6_K).
    CHECK(p.expert_slots == 16);
    uint64_t largest_slot = 0;
    for (const auto& l : m.plan.layers)
        for (const auto& e : l.experts) largest_slot = std::max(largest_slot, slot_of(e));
    CHECK(p.expert_slot_bytes == largest_slot);
    CHECK(largest_expert(m.plan) == 2 * 2048 * 7168 / 256 * 144 + 2048 * 7168 / 256 * 210);
    CHECK(p.expert_cache_entries > 100);
    CHECK(p.total_bytes <= p.budget_bytes);
    CHECK(p.budget_bytes - p.total_bytes < p.expert_slot_bytes);  // what is left holds no further expert
    CHECK_FALSE(p.embedding_resident);
    // Placed in order of bytes saved per byte: every per-step item before the expert cache.
    REQUIRE(p.residents.size() >= 4);
    CHECK(p.residents[0].what == "vectors");
    CHECK(p.residents[1].what == "mla cache");
    CHECK(p.residents.back().what == "expert cache");
    CHECK(p.residents.back().saved_per_step == doctest::Approx(double(p.expert_cache_bytes) * 8.0 / 256.0));
}

TEST_CASE("the minimum --vram holds only vectors, activations and the slots; one byte less is refused naming it") {
    const auto& m = v3_q4_k_m();
    const DevicePlan big = plan_device_memory(m.layout, m.plan, request(24 * GiB));
    const DevicePlan p = plan_device_memory(m.layout, m.plan, request(big.minimum_bytes));
    CAPTURE(p.describe());
    CHECK(p.total_bytes == p.minimum_bytes);
    CHECK_FALSE(p.mla_on_device);
    CHECK(p.describe().find("pinned host memory") != std::string::npos);
    CHECK(p.n_dense_resident() == 0);
    CHECK(p.dense_slots == 2);
    CHECK(p.expert_cache_entries == 0);
    uint64_t largest_dense = 0;
    for (const auto& l : m.plan.layers) largest_dense = std::max(largest_dense, slot_of(l.dense));
    CHECK(p.dense_slot_bytes == largest_dense);  // a dense layer's MLP: the largest segment
    CHECK(p.minimum_bytes == p.vectors_bytes + 512 * MiB + 2 * p.dense_slot_bytes + 16 * p.expert_slot_bytes);
    try {
        plan_device_memory(m.layout, m.plan, request(big.minimum_bytes - 1));
        FAIL("a budget below the minimum was accepted");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::out_of_memory);
        const std::string want = fmt::format("raise --vram to at least {:.2f} GiB", double(big.minimum_bytes) / double(GiB));
        CHECK_MESSAGE(std::string(e.what()).find(want) != std::string::npos, e.what());
    }
    CHECK_THROWS_AS(plan_device_memory(m.layout, m.plan, request(0)), Error);
}

TEST_CASE("a context whose latent cache does not fit leaves it in pinned host memory and keeps the dense segments") {
    const auto& m = v3_q4_k_m();
    DeviceRequest r = request(24 * GiB, 163840);
    r.n_sequences = 2;  // 2 x 21.5 GiB of latent cache
    const DevicePlan p = plan_device_memory(m.layout, m.plan, r);
    CAPTURE(p.describe());
    CHECK_FALSE(p.mla_on_device);
    CHECK(p.n_dense_resident() == 61);
    CHECK(p.total_bytes <= p.budget_bytes);
}

TEST_CASE("growing the budget never shrinks what is resident, never passes the budget, and caches experts only in room no dense segment fits") {
    const auto& m = v3_q4_k_m();
    const uint64_t minimum = plan_device_memory(m.layout, m.plan, request(24 * GiB)).minimum_bytes;
    uint64_t last_total = 0;
    for (uint64_t budget = minimum; budget < minimum + 14 * GiB; budget += 97 * MiB) {
        const DevicePlan p = plan_device_memory(m.layout, m.plan, request(budget));
        CAPTURE(budget);
        CHECK(p.total_bytes <= budget);
        CHECK(p.total_bytes >= last_total);
        last_total = p.total_bytes;
        // The dense slots are as large as the largest segment still streamed.
        uint64_t streamed = 0;
        for (size_t l = 0; l < m.plan.layers.size(); ++l)
            if (!p.dense_resident[l]) streamed = std::max(streamed, slot_of(m.plan.layers[l].dense));
        CHECK(p.dense_slot_bytes == streamed);
        CHECK(p.dense_slots == (streamed ? 2 : 0));
        // A dense segment is read every step, an expert far less often: experts only take room
        // that no streamed dense segment would fit in.
        uint64_t smallest_streamed = UINT64_MAX;
        for (size_t l = 0; l < m.plan.layers.size(); ++l)
            if (!p.dense_resident[l]) smallest_streamed = std::min(smallest_streamed, resident_of(m.plan.layers[l].dense));
        if (streamed) CHECK(p.expert_cache_bytes + (budget - p.total_bytes) < smallest_streamed);
    }
    CHECK(plan_device_memory(m.layout, m.plan, request(minimum + 14 * GiB)).n_dense_resident() == 61);
}

TEST_CASE("the tiny fixture fits whole: every segment resident, an expert cache of all the rest; the embedding stays a host view") {
    const auto& m = tiny();
    DeviceRequest r = request(256 * MiB, 64);
    r.activation_bytes = 1 * MiB;
    const DevicePlan p = plan_device_memory(m.layout, m.plan, r);
    CAPTURE(p.describe());
    int64_t experts = 0;
    for (const auto& l : m.plan.layers) experts += int64_t(l.experts.size());
    CHECK(p.mla_on_device);
    CHECK(p.n_dense_resident() == m.layout.n_layers);
    CHECK(p.dense_slots == 0);
    CHECK(p.expert_slots == 2 * m.layout.router.top_k);
    CHECK(p.expert_cache_entries == experts - p.expert_slots);
    CHECK(p.head_resident);
    CHECK_FALSE(p.embedding_resident);  // the host dequantises a step's rows
    // Asking for more expert slots than 2 x top_k gets them; fewer gets 2 x top_k.
    r.expert_slots = 3 * m.layout.router.top_k;
    CHECK(plan_device_memory(m.layout, m.plan, r).expert_slots == 3 * m.layout.router.top_k);
    r.expert_slots = 1;
    CHECK(plan_device_memory(m.layout, m.plan, r).expert_slots == 2 * m.layout.router.top_k);
}
