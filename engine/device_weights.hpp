// Device memory as the first cache level (VRAM level 1, host RAM level 2, disk level 3). A
// WeightProvider in front of the host one (the streamer, or resident host weights) that hands the
// forward pass device views: each segment the host provider hands out is copied whole, in one
// transfer on the backend's copy queue, into a device slot, and its views are rebased there; the
// compute queue waits for that copy's event, never the host. A host buffer goes back to its
// provider only once its copy has completed. Device slots are keyed by segment identity
// (layer, expert), never by host address: a host buffer reused for another expert is another key.
//
// What stays on the device for the whole run (routers, norms, the head, the dense layers the
// plan chose) is copied once at construction. The rest streams through `dense_slots` dense slots
// (>= 2: layer L+1's dense part is copied while L computes) and `expert_slots` expert slots, which
// keep their experts after use as the device expert cache.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend.hpp"
#include "engine/model_layout.hpp"
#include "engine/model_plan.hpp"
#include "engine/tensor_source.hpp"
#include "engine/weight_provider.hpp"

namespace sluice {

struct DeviceWeightsOptions {
    std::vector<uint8_t> dense_resident;  // [n_layers]: the dense segment lives on the device
    int dense_slots = 2;                  // for the other layers' dense segments
    int expert_slots = 0;                 // 0: 2 x top_k
};

struct DeviceWeightStats {
    int64_t dense_copies = 0;
    int64_t expert_copies = 0;
    uint64_t bytes_copied = 0;
    int64_t expert_hits = 0;       // needed experts already on the device
    int64_t dense_prefetches = 0;  // dense segments copied while the previous layer computed
};

class DeviceWeights final : public WeightProvider {
public:
    // Copies the always-resident parts (every layer's vectors and router, final norm, head, the
    // dense segments marked resident) from `host` at once. The embedding stays a host view (the
    // backend dequantises the step's rows on the host).
    // `source` serves the dense segments resident on the device (read once, copied, dropped).
    DeviceWeights(const ModelLayout& layout, const ModelPlan& plan, const TensorSource& source, WeightProvider& host,
                  Backend& device, const DeviceWeightsOptions& options);

    const ModelWeights& globals() override { return device_globals_; }
    const LayerWeights& begin_layer(int layer) override;
    void need_experts(int layer, std::span<const int32_t> experts) override;
    int32_t next_expert(int layer, const ExpertWeights** weights) override;
    void end_layer(int layer) override;
    void begin_step(int64_t n_tokens) override;
    void end_step() override;
    void expect_next_step(int64_t n_tokens) override { host_.expect_next_step(n_tokens); }
    const LayerWeights* peek_layer(int layer) override;
    void predict_experts(int layer, std::span<const int32_t> experts) override;
    bool wants_predictions() const override { return host_.wants_predictions(); }

    const DeviceWeightStats& stats() const { return stats_; }
    // Bytes of device memory this object holds (resident parts and slots).
    uint64_t device_bytes() const { return device_bytes_; }
    // What this object allocates, for the device planner (engine/device_planner), exactly:
    // the always-resident region (every layer's norms, router and router bias, the final norm and
    // the head, each 256-byte aligned), one slot for a streamed segment (the host buffer it is
    // copied from holds the segment with each extent rounded out to 4 KiB), and a dense segment
    // kept resident (read as one buffer, each tensor 64-byte aligned).
    static uint64_t resident_region_bytes(const ModelLayout& layout, const ModelPlan& plan);
    static uint64_t slot_bytes(const Segment& segment);
    static uint64_t resident_segment_bytes(const Segment& segment);

private:
    struct Slot {
        std::byte* memory = nullptr;
        size_t capacity = 0;
        int layer = -1;
        int expert = -1;        // -1: a dense slot
        int copy_done = -1;     // backend events
        int use_done = -1;
        bool copied = false;    // copy_done recorded for the current contents
        int pins = 0;
        int64_t last_used = -1; // step
        float uses = 0;
        LayerWeights dense;     // rebased views, dense slots
        ExpertWeights expert_weights;
    };

    void* device_alloc(size_t bytes);
    void copy_resident(const ModelWeights& host_globals, const TensorSource& source);
    Slot* find_dense(int layer);
    Slot* acquire_dense(int for_layer);
    Slot* acquire_expert();
    void copy_dense_into(Slot& s, int layer, const LayerWeights& host_layer);
    void release_handed();
    void abandon_step();
    void wait_dense_copies();
    void prefetch_next_dense();

    ModelLayout layout_;
    const ModelPlan& plan_;
    WeightProvider& host_;
    Backend& device_;
    DeviceWeightsOptions options_;
    uint64_t device_bytes_ = 0;

    ModelWeights device_globals_;       // device views (embedding: host view)
    std::vector<LayerWeights> resident_layers_;  // dense segments resident on the device
    std::vector<uint8_t> resident_;
    std::vector<Slot> dense_slots_;
    std::vector<Slot> expert_slots_;
    std::vector<std::vector<int>> expert_slot_of_;  // [layer][expert] -> slot or -1

    // The layer computing now.
    int computing_layer_ = -1;
    Slot* current_dense_ = nullptr;
    std::vector<int> device_ready_;     // slots of needed experts already on the device, handed out first
    size_t next_ready_ = 0;
    std::vector<int32_t> host_needed_;
    bool host_done_ = true;
    Slot* handed_ = nullptr;            // the expert the forward is computing with
    Slot* host_copy_pending_ = nullptr; // its host buffer is still the host provider's current one
    int64_t step_ = 0;
    DeviceWeightStats stats_;
};

}  // namespace sluice
