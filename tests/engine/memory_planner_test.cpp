// The memory plan is the allocation: for every mode and several forward shapes (one sequence, a
// batch decoding together as bench runs it, a scheduler's many sequences), the bytes the planner
// counts equal the bytes the streamer, the resident loader and DeepseekForward then allocate,
// on a model whose experts are just over a 2 MiB multiple (the size that huge-page rounding of
// each buffer doubled).
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/memory_planner.hpp"
#include "engine/model_loader.hpp"
#include "engine/reader_segment_io.hpp"
#include "engine/streamer.hpp"
#include "engine/synth.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

// 1 dense + 2 MoE layers of 8 experts of 3 x 704 x 512 BF16 = 2.06 MiB each.
struct OddExpertModel {
    fs::path dir;
    OddExpertModel() {
        dir = fs::temp_directory_path() / fmt::format("sluice_planner_model_{}", ::getpid());
        SynthOptions o;
        o.config = synth_preset("tiny");
        o.config.vocab_size = 512;
        o.config.hidden_size = 512;
        o.config.n_layers = 3;
        o.config.first_k_dense_replace = 1;
        o.config.intermediate_size = 1024;
        o.config.moe_intermediate_size = 704;
        o.config.n_routed_experts = 8;
        o.config.n_shared_experts = 1;
        o.config.num_experts_per_tok = 2;
        o.config.n_group = 1;
        o.config.topk_group = 1;
        o.config.num_nextn_predict_layers = 0;
        o.output_dir = dir;
        o.weight_dtype = "BF16";
        o.seed = 3;
        write_synthetic_model(o);
    }
    ~OddExpertModel() { fs::remove_all(dir); }
};

std::vector<RunShape> shapes() {
    return {
        RunShape{1, 64, 16},          // run: one sequence, prompt in steps of 16
        RunShape{1, 40, 40, 40},      // perplexity: every position's logits kept
        RunShape{16, 10, 64, 16},     // bench's batched decode: 16 sequences, 4-token prompts, one logits row each
        RunShape{256, 10, 512, 256},  // the same at 256 sequences, prompts in steps of -b 512
        RunShape{8, 200, 32},         // a scheduler: 8 sequences of 200 positions, 32 tokens a step
    };
}

}  // namespace

TEST_CASE("the planner counts what the streamer and the resident loader allocate, in every mode") {
    OddExpertModel m;
    const auto model = open_model(m.dir.string());
    std::vector<Extent> extents;
    model->plan.layers[1].experts[0].extents(extents);
    const uint64_t expert_read = io::SegmentReader::buffer_bytes_for(extents);
    CAPTURE(expert_read);
    REQUIRE(expert_read > (2u << 20));
    REQUIRE(expert_read < (2u << 20) + (128u << 10));

    MemoryRequest req;
    req.n_threads = 2;
    SUBCASE("everything resident") {
        req.resident = ResidentMode::all;
        const auto plan = plan_memory(model->layout, model->plan, req);
        const ModelWeights w = load_resident(model->layout, model->plan, *model->source);
        CHECK(plan.global_bytes + plan.resident_dense_bytes + plan.resident_expert_bytes == uint64_t(w.resident_bytes));
        CHECK(plan.staging_bytes() == 0);
    }
    SUBCASE("streamed") for (ResidentMode mode : {ResidentMode::none, ResidentMode::dense, ResidentMode::automatic}) {
        for (int prefetch : {1, 2}) {
            CAPTURE(resident_mode_name(mode));
            CAPTURE(prefetch);
            req.resident = mode;
            req.prefetch_layers = prefetch;
            // auto: a budget that keeps the dense parts resident and fills the rest with experts.
            req.ram_budget_bytes = mode == ResidentMode::automatic ? 48u << 20 : 0;
            const auto plan = plan_memory(model->layout, model->plan, req);
            if (mode == ResidentMode::automatic) {
                CHECK(plan.resident_dense_bytes > 0);
                CHECK(plan.expert_cache_entries() > 0);
                CHECK(plan.total_bytes <= req.ram_budget_bytes);
            }
            ReaderSegmentIo io(model->source->files(), io::ReaderOptions{});
            StreamerOptions so;  // as the runtime builds it from the plan
            so.resident = plan.resident_dense_bytes > 0 ? ResidentMode::dense : ResidentMode::none;
            so.prefetch_layers = prefetch;
            so.expert_buffers = plan.expert_pool.count;
            Streamer streamer(model->layout, model->plan, *model->source, io, so);
            // Each expert buffer a 2.06 MiB slice of one huge-page mapping, not a 4 MiB mapping of its own.
            CHECK(plan.expert_pool.bytes() < uint64_t(plan.expert_pool.count) * expert_read + (2u << 20));
            CHECK(plan.global_bytes + plan.resident_dense_bytes + plan.staging_bytes() == streamer.allocated_bytes());
        }
    }
}

TEST_CASE("the planner counts what DeepseekForward allocates, for every shape, and plans the largest") {
    OddExpertModel m;
    const auto model = load_model(m.dir.string());
    ThreadPool pool(2);
    uint64_t largest = 0;
    for (const RunShape& shape : shapes()) {
        CAPTURE(shape.n_sequences);
        CAPTURE(shape.positions);
        CAPTURE(shape.step_tokens);
        MemoryRequest req;
        req.shapes = {shape};
        req.n_threads = pool.size();
        req.resident = ResidentMode::all;
        const auto plan = plan_memory(model->layout(), model->open->plan, req);
        const DeepseekForward forward(model->layout(), *model->provider, ForwardOptions{shape}, pool);
        CHECK(plan.mla_cache_bytes + plan.activation_bytes == uint64_t(forward.allocated_bytes()));
        CHECK(plan.logits_bytes ==
              AlignedBuffer::held_bytes(size_t(shape.logits_held() * model->layout().vocab) * sizeof(float)));
        largest = std::max(largest, plan.mla_cache_bytes + plan.activation_bytes + plan.logits_bytes);
    }
    // All the shapes at once (forwards built one after another): the largest is what is planned.
    MemoryRequest req;
    req.shapes = shapes();
    req.n_threads = pool.size();
    req.resident = ResidentMode::all;
    const auto plan = plan_memory(model->layout(), model->open->plan, req);
    CHECK(plan.mla_cache_bytes + plan.activation_bytes + plan.logits_bytes == largest);
    CHECK(plan.shape.n_sequences == 256);
}

TEST_CASE("a budget the largest forward shape does not fit is refused, naming that shape") {
    OddExpertModel m;
    const auto model = open_model(m.dir.string());
    MemoryRequest req;
    req.shapes = {RunShape{1, 64, 16}, RunShape{256, 4000, 512}};
    req.resident = ResidentMode::none;
    req.ram_budget_bytes = 64u << 20;
    CHECK_THROWS_WITH_AS(plan_memory(model->layout, model->plan, req),
                         doctest::Contains("256 sequence(s) of 4000 positions, 512 tokens a step"), Error);
}
