// The streamer: a WeightProvider that keeps only what the budget allows in memory and reads
// the rest from disk while the previous work computes. Dense segments are read one or more
// layers ahead into a ring of dense buffers; routed experts are read into a pool of expert
// buffers the moment the router has run (or earlier, on a prediction), and handed to the
// forward pass in the order they land. The expert pool doubles as the expert cache: a buffer
// keeps its expert after use and is reused for another by a frequency-with-decay score.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/aligned_buffer.hpp"
#include "engine/memory_planner.hpp"
#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"
#include "engine/segment_io.hpp"
#include "engine/tensor_source.hpp"
#include "engine/trace.hpp"
#include "engine/weight_provider.hpp"

namespace sluice {

struct StreamerOptions {
    ResidentMode resident = ResidentMode::none;  // none | dense (all dense parts resident)
    int prefetch_layers = 1;      // dense segments read ahead of compute (dense_buffer_count buffers)
    int expert_buffers = 0;       // staging + cache entries; 0 = 2 x top_k (the runtime: the plan's count)
    bool speculate = true;        // predict layer L+1's experts from the state entering it
    double score_decay = 0.9;     // per step, for the cache's frequency score
    // [layer] != 0: that layer's dense segment is never read here (a device keeps it resident);
    // begin_layer hands out its vectors and router only.
    std::vector<uint8_t> dense_elsewhere;
    // Tests: replace every prediction by experts that will not be needed.
    bool force_wrong_predictions = false;
};

struct StepStats {
    int64_t step = 0;
    int64_t n_tokens = 0;
    uint64_t bytes_read = 0;
    double step_seconds = 0;
    double read_seconds = 0;     // wall time with at least one read in flight
    double wait_seconds = 0;     // compute blocked on data
    double compute_seconds = 0;  // step - wait
    int64_t experts_needed = 0;
    int64_t cache_hits = 0;      // needed experts already in memory from earlier steps
    int64_t prefetch_hits = 0;   // needed experts read early on a prediction
    int64_t predicted = 0;       // experts read on a prediction
    int64_t guesses_evicted = 0; // predicted experts evicted unused before their layer ran (wasted reads)
    int64_t dense_reads = 0;
    int64_t expert_reads = 0;
    // max(read, compute) / step: 1.0 when reading and computing fully overlap.
    double overlap_efficiency() const;
    // Adds another step's figures (totals over a phase; `step` counts the steps added).
    StepStats& operator+=(const StepStats& s);
    nlohmann::json to_json() const;
};

class Streamer final : public WeightProvider {
public:
    Streamer(const ModelLayout& layout, const ModelPlan& plan, const TensorSource& source, SegmentIo& io,
             const StreamerOptions& options);
    ~Streamer() override;

    const ModelWeights& globals() override { return globals_; }
    const LayerWeights& begin_layer(int layer) override;
    void need_experts(int layer, std::span<const int32_t> experts) override;
    int32_t next_expert(int layer, const ExpertWeights** weights) override;
    void end_layer(int layer) override;
    void begin_step(int64_t n_tokens) override;
    void end_step() override;
    void expect_next_step(int64_t n_tokens) override { next_step_tokens_ = n_tokens; }
    const LayerWeights* peek_layer(int layer) override;
    void predict_experts(int layer, std::span<const int32_t> experts) override;
    bool wants_predictions() const override { return options_.speculate && !expert_pool_.empty(); }

    // --trace: every read (segment, bytes, buffer) and every wait goes on the timeline.
    void set_trace(Trace* trace) { trace_ = trace; }

    const std::vector<StepStats>& steps() const { return steps_; }
    // Forgets the per-step history (a server runs unbounded numbers of steps); totals() and
    // steps() restart from here.
    void clear_steps() { steps_.clear(); }
    StepStats totals() const;
    // Bytes this streamer holds from the OS: staging and cache pools, resident weights.
    uint64_t allocated_bytes() const { return allocated_bytes_; }
    // Buffers pinned by the layer computing (none between steps) and buffers whose read is in
    // flight (each holds one ticket of the reader's): what tests check after a failed read.
    int buffers_pinned() const;
    int reads_outstanding() const;

private:
    enum class BufferState { empty, reading, ready };
    struct Buffer {
        std::byte* data = nullptr;               // in its pool's arena
        size_t capacity = 0;
        size_t used_bytes = 0;                   // of the segment read last (extents rounded out)
        std::chrono::steady_clock::time_point submitted;  // of the read in flight or last landed
        int layer = -1;
        int expert = -1;                         // -1: a dense segment
        BufferState state = BufferState::empty;
        uint64_t ticket = 0;
        std::vector<const std::byte*> extent_data;  // per flattened extent
        int pins = 0;
        bool predicted = false;                  // read on a prediction, not yet used
        int64_t demand_step = -1;                // step_serial_ of the step that read it on demand, else -1
        LayerWeights dense;                      // views, when expert == -1 and bound
        ExpertWeights expert_weights;            // views, when expert >= 0 and bound
        bool bound = false;
    };

    void zero_buffers();
    // on_demand: for bytes the layer computing waits for (not a prefetch or a guess).
    void submit(Buffer& b, int layer, int expert, const Segment& segment, bool on_demand);
    void abandon_layer();
    void finish_read(Buffer& b);
    bool wanted_now(const Buffer& b) const;
    bool collect(Buffer& b, bool block);
    void drop_failed_read(Buffer& b);
    void wait_for(Buffer& b);
    void poll_all();
    void bind(Buffer& b);
    Buffer* find(std::vector<Buffer>& pool, int layer, int expert);
    Buffer* acquire_dense(int for_layer);
    Buffer* acquire_expert(int for_layer, bool for_prediction, double prediction_score);
    Buffer* acquire_expert_in_scan(int for_layer, bool for_prediction);
    // Steps of at least this many tokens route to nearly every expert (64 x top_k 8 = 512 routes
    // over 256 experts): their guesses are nearly all right, so they may fill the pool.
    static constexpr int64_t kWideStepTokens = 64;
    // Reads in flight below which a needed read of a scan step may evict experts kept for later layers.
    static constexpr int kScanReadsInFlight = 8;
    void make_pool(std::vector<Buffer>& buffers, AlignedBuffer& arena, const StagingPool& pool);
    double score(int layer, int expert) const;
    bool still_needed(int expert) const;
    bool dense_elsewhere(int layer) const {
        return size_t(layer) < options_.dense_elsewhere.size() && options_.dense_elsewhere[size_t(layer)];
    }
    void trace_wait(std::chrono::steady_clock::time_point start, int layer);
    void touch(int layer, int expert);
    void prefetch_dense_after(int layer);
    void submit_deferred(int layer);
    void issue_guesses();
    void guess_first_moe_layer(int64_t n_tokens);
    double expected_experts_per_layer(int64_t n_tokens) const;
    void read_started();
    void read_landed();

    ModelLayout layout_;
    const ModelPlan& plan_;
    const TensorSource& source_;
    SegmentIo& io_;
    StreamerOptions options_;

    ModelWeights globals_;                     // embedding, head, every vector; resident dense parts
    bool dense_resident_ = false;
    AlignedBuffer dense_arena_, expert_arena_;  // the pools' memory
    std::vector<Buffer> dense_pool_;
    std::vector<Buffer> expert_pool_;
    std::vector<std::vector<int>> expert_buffer_;  // [layer][expert] -> buffer index or -1
    std::vector<float> frequency_;             // [layer * n_experts + expert], decayed
    std::vector<int64_t> last_step_;           // step of the last decay update per entry

    // The layer being computed.
    Buffer* current_dense_ = nullptr;
    Buffer* current_expert_ = nullptr;
    std::vector<int32_t> needed_;
    std::vector<uint8_t> handed_;
    std::vector<int32_t> deferred_;            // needed but waiting for a free buffer
    // Predictions not read yet. A guess is read only while no needed read is in flight (and only
    // so many at a time: issue_guesses), so a wrong guess costs idle disk time, never bandwidth
    // that the step's own experts wait for.
    struct PendingGuess {
        int layer;
        int32_t expert;
    };
    std::vector<PendingGuess> guesses_;
    std::vector<uint64_t> wait_tickets_;       // scratch for wait_any
    std::vector<size_t> wait_index_;

    std::vector<Extent> extent_scratch_;
    StepStats current_;
    std::vector<StepStats> steps_;
    int64_t step_index_ = 0;
    int64_t step_serial_ = 0;                  // counts begin_step, steps cut short included
    int computing_layer_ = -1;                 // the layer between begin_layer and end_layer
    bool scan_step_ = false;                   // this step needs more experts than the pool holds
    int64_t n_moe_layers_ = 0;
    int first_moe_layer_ = -1;                 // -1: none
    int last_moe_layer_ = -1;
    int64_t next_step_tokens_ = 0;             // the caller's estimate (expect_next_step)
    std::chrono::steady_clock::time_point step_start_;
    // Time with a read in flight: reads submitted and not yet seen landed, since when.
    int reads_in_flight_ = 0;
    std::chrono::steady_clock::time_point busy_since_{};
    uint64_t allocated_bytes_ = 0;
    std::vector<void*> pinned_;                // buffers page-locked for a CUDA device
    Trace* trace_ = nullptr;
};

}  // namespace sluice
