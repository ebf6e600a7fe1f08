// The performance model behind `sluice plan`: how long one forward step takes from the bytes it
// must read from disk and copy to the device, and the compute it must do, overlapped the way the
// streamer overlaps them; and from those steps, tokens/s of prefill, decode and batched decode.
//
// Expert reuse: a token routes to (layer, expert) with probability p (k/E for every expert under
// uniform routing, or as measured by `--stats-json`), tokens independently, so a step of t tokens
// needs it with probability P = 1 - (1 - p)^t. The caches hold the entries a step is most likely
// to need (the streamer's frequency score keeps what is used most): VRAM the first, RAM the next,
// and the rest comes from disk; a pool of buffers that also takes the step's reads caches one
// layer's misses fewer entries than it has buffers (PerfModel::needs). Per layer, in order:
//   - its dense segment was read (and copied) while the previous layer computed; a ring of D
//     buffers holds the layer computing and the D - 1 read ahead, so it keeps its segments from one
//     step to the next only when it holds all of them (each is read every step otherwise);
//   - attention and the router compute once it is there;
//   - the missing experts are read (and copied) in that order behind whatever the disk and the
//     link were already doing, and each computes as it lands (cached ones first);
//   - the shared expert computes last; the next layer's dense read was issued when this layer began.
// The step ends with the head. Two identical steps run back to back and the second is the
// prediction (the first fills the pipeline, as the previous step does in a real run).
// Speculation: the previous layer's router names this layer's experts early; between that moment
// and this layer's router the disk reads the named experts it is not busy with otherwise, and a
// fraction a of them (the guess accuracy a run measured, 0 without one) are this layer's misses.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/compute_profile.hpp"
#include "engine/model_loader.hpp"
#include "engine/routing_stats.hpp"

namespace sluice {

enum class Tier : uint8_t { device, host, disk };
const char* tier_name(Tier tier);

// Where the bytes live while the model runs: what the memory planners decided.
struct Placement {
    bool gpu = false;                   // compute on a GPU (its VRAM is the device tier), else the CPU
    std::vector<Tier> dense;            // per layer
    Tier head = Tier::host;
    int64_t device_expert_entries = 0;  // expert buffers that keep their expert between steps
    int64_t host_expert_entries = 0;
    // The entries are a pool of buffers that also take the step's reads (copies), not experts loaded
    // before the run: DeviceWeights' expert slots, the streamer's expert pool.
    bool device_pool = false, host_pool = false;
    int dense_buffers = 2;              // the streamer's ring that dense segments read from disk pass through
    int device_dense_slots = 2;         // GPU: the device's ring that dense segments copied per step pass through
    bool mla_on_device = true;          // GPU: else copied over the link for every layer of every step
    uint64_t mla_bytes_per_position = 0;  // latent cache bytes per cached position, all layers
};

// Seconds of each piece of a step on whatever computes it.
class ComputeTimes {
public:
    virtual ~ComputeTimes() = default;
    // A layer's norms, attention (projections, and `sequences` sequences of tokens / sequences
    // tokens each over `context` cached positions), and a dense layer's MLP; no experts, no router.
    virtual double dense_part(int layer, int64_t tokens, int sequences, int64_t context) const = 0;
    virtual double shared_expert(int layer, int64_t tokens) const = 0;
    virtual double router(int layer, int64_t tokens) const = 0;
    virtual double expert(int layer, double tokens) const = 0;  // one routed expert
    virtual double head(int64_t rows) const = 0;
    virtual std::string describe() const = 0;
};

// Curves measured on this machine's CPU (the profile must outlive the result).
std::unique_ptr<ComputeTimes> measured_cpu_times(const OpenModel& model, const CpuComputeProfile& profile);
// Every matrix product takes max(its weight bytes / bytes_per_s, its FLOPs / flops_per_s), attention
// likewise over the latent cache; `launch_seconds` per kernel (GPU: each product, attention, norm).
std::unique_ptr<ComputeTimes> roofline_times(const OpenModel& model, double bytes_per_s, double flops_per_s,
                                             double launch_seconds, std::string what);

// Per-token routing probability of every (layer, expert).
struct Routing {
    std::vector<double> p;  // [layer * n_experts + expert]; dense layers 0
    double guess_accuracy = 0;  // fraction of a layer's needed experts its early guess named
    std::string source;
    static Routing uniform(const ModelLayout& layout);
    // Checks the counts were recorded on a model of this shape (invalid_input naming `source`).
    static Routing measured(const ModelLayout& layout, const RoutingCounts& counts, const std::string& source);
};

struct LinkRates {
    double disk_bytes_per_s = 0;         // dense segments: long sequential reads
    double expert_disk_bytes_per_s = 0;  // experts (a few MB each, several extents); 0: disk_bytes_per_s
    double pcie_bytes_per_s = 0;         // GPU only
};

struct StepShape {
    int64_t tokens = 1;       // in the step, over all sequences
    int sequences = 1;        // tokens / sequences each
    int64_t context = 0;      // positions each sequence has cached before the step
    int64_t logits_rows = 1;  // head rows computed
    bool cold = false;        // the expert caches start empty (a run's first step)
};

struct StepPrediction {
    StepShape shape;
    double experts_needed = 0;  // expected distinct (layer, expert) pairs the step needs
    double experts_device = 0, experts_host = 0, experts_disk = 0;  // where they come from
    double disk_bytes = 0, copy_bytes = 0;
    double disk_seconds = 0, copy_seconds = 0, compute_seconds = 0;  // busy time of each
    double seconds = 0;         // the step, overlapped
    std::string bound;          // "disk", "pcie" or "compute": the busiest
    nlohmann::json to_json() const;
};

struct PhasePrediction {
    std::string name;
    int64_t tokens = 0;
    int64_t steps = 0;
    double seconds = 0;
    double tokens_per_s() const { return seconds > 0 ? double(tokens) / seconds : 0; }
    StepPrediction sum;         // figures summed over the steps (shape: the last step's)
    nlohmann::json to_json() const;
};

class PerfModel {
public:
    PerfModel(const OpenModel& model, Placement placement, const ComputeTimes& compute, Routing routing, LinkRates rates);

    StepPrediction step(const StepShape& shape) const;
    // A prompt of `prompt` tokens from position 0, in chunks of `chunk`; logits of the last token
    // only. `cold`: the run's first work, its first step finds the expert caches empty.
    PhasePrediction prefill(const std::string& name, int64_t prompt, int64_t chunk, bool cold = false) const;
    // `steps` steps of one token for each of `sequences` sequences, from `context` cached positions.
    PhasePrediction decode(const std::string& name, int sequences, int64_t context, int64_t steps) const;

    const Placement& placement() const { return placement_; }
    const Routing& routing() const { return routing_; }

private:
    struct LayerNeeds {
        double needed = 0, device = 0, host = 0, disk = 0;  // expected experts
        double compute = 0;                                  // seconds of the needed experts' products
    };
    std::vector<LayerNeeds> needs(const StepShape& shape) const;

    const OpenModel& model_;
    Placement placement_;
    const ComputeTimes& compute_;
    Routing routing_;
    LinkRates rates_;
    std::vector<uint64_t> dense_bytes_, expert_bytes_;  // per layer (one expert)
    uint64_t head_bytes_ = 0;
};

}  // namespace sluice
