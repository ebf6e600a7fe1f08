#include "engine/perf_model.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.hpp"

namespace sluice {

const char* tier_name(Tier tier) {
    switch (tier) {
        case Tier::device: return "vram";
        case Tier::host: return "ram";
        case Tier::disk: return "disk";
    }
    return "?";
}

namespace {

bool is_shared(WeightRole r) {
    return r == WeightRole::shared_gate || r == WeightRole::shared_up || r == WeightRole::shared_down;
}

// The dense part's products (no shared expert), per layer.
std::vector<const PlannedTensor*> dense_matrices(const LayerPlan& l) {
    std::vector<const PlannedTensor*> out;
    for (const auto& t : l.dense.tensors)
        if (t.rows > 1 && !is_shared(t.role)) out.push_back(&t);
    return out;
}

// Measured on this CPU: the probe's dense part less its shared expert (its MLP) and its causal
// attention, plus attention at the step's own context, plus a dense layer's MLP; products from
// the matrix curves.
class MeasuredCpuTimes final : public ComputeTimes {
public:
    MeasuredCpuTimes(const OpenModel& m, const CpuComputeProfile& p) : profile_(p) {
        auto need = [&](const PlannedTensor& t) {
            const MatrixTiming* timing = p.find(t.type, t.rows, t.cols);
            if (!timing)
                fail(ErrorKind::invalid_input, "the CPU timings have none of '{}' ({} {}x{}): measured on another model?",
                     t.name, dtype_name(t.type), t.rows, t.cols);
            return timing;
        };
        for (const auto& l : m.plan.layers) {
            Layer x;
            for (const auto& t : l.dense.tensors) {
                // The attention matrices are timed inside the probe's forward pass, not here.
                const bool mlp = t.role == WeightRole::dense_gate || t.role == WeightRole::dense_up ||
                                 t.role == WeightRole::dense_down;
                if (!mlp && !is_shared(t.role)) continue;
                (mlp ? x.mlp : x.shared).push_back(need(t));
            }
            if (!l.experts.empty())
                for (const auto& t : l.experts.front().tensors) x.expert.push_back(need(t));
            for (const auto& t : l.vectors.tensors)
                if (t.role == WeightRole::router) x.router = need(t);
            layers_.push_back(std::move(x));
        }
        for (const auto& t : m.plan.globals.tensors)
            if (t.role == WeightRole::lm_head) head_ = need(t);
        // The probe's MLP is the typical MoE layer's shared expert.
        for (const auto& l : layers_)
            if (!l.shared.empty()) {
                probe_mlp_ = &l.shared;
                break;
            }
    }

    double dense_part(int layer, int64_t tokens, int sequences, int64_t context) const override {
        const double n = double(tokens);
        const double causal = n * (n + 1) / 2 * profile_.decompressed_seconds_per_token_position;
        double s = std::max(0.0, profile_.dense_part.at(n) - causal - sum(probe_mlp_, n));
        const int64_t per_sequence = std::max<int64_t>(tokens / std::max(sequences, 1), 1);
        if (per_sequence == 1) {
            s += n * double(context) * profile_.absorbed_seconds_per_token_position;
        } else {
            const double m = double(per_sequence);
            s += double(sequences) * (m * double(context) + m * (m + 1) / 2) * profile_.decompressed_seconds_per_token_position;
        }
        return s + sum(&layers_[size_t(layer)].mlp, n);
    }
    double shared_expert(int layer, int64_t tokens) const override { return sum(&layers_[size_t(layer)].shared, double(tokens)); }
    double router(int layer, int64_t tokens) const override {
        const MatrixTiming* r = layers_[size_t(layer)].router;
        return r ? r->seconds.at(double(tokens)) : 0;
    }
    double expert(int layer, double tokens) const override { return sum(&layers_[size_t(layer)].expert, tokens); }
    double head(int64_t rows) const override { return head_ ? head_->seconds.at(double(rows)) : 0; }
    std::string describe() const override {
        return fmt::format("measured on this CPU ({} threads, {:.1f} s of timing)", profile_.threads, profile_.seconds_spent);
    }

private:
    struct Layer {
        std::vector<const MatrixTiming*> shared, mlp, expert;
        const MatrixTiming* router = nullptr;
    };
    static double sum(const std::vector<const MatrixTiming*>* ms, double n) {
        double s = 0;
        if (ms)
            for (const auto* m : *ms) s += m->seconds.at(n);
        return s;
    }
    const CpuComputeProfile& profile_;
    std::vector<Layer> layers_;
    const std::vector<const MatrixTiming*>* probe_mlp_ = nullptr;
    const MatrixTiming* head_ = nullptr;
};

class RooflineTimes final : public ComputeTimes {
public:
    RooflineTimes(const OpenModel& m, double bytes_per_s, double flops_per_s, double launch, std::string what)
        : model_(m), bw_(bytes_per_s), flops_(flops_per_s), launch_(launch), what_(std::move(what)) {}

    double dense_part(int layer, int64_t tokens, int sequences, int64_t context) const override {
        const auto& d = model_.layout;
        const LayerPlan& l = model_.plan.layers[size_t(layer)];
        double s = 0;
        int kernels = 4;  // norms, rope, residual adds
        for (const auto* t : dense_matrices(l)) {
            s += product(*t, double(tokens));
            ++kernels;
        }
        // Attention over the latent cache (f32 values): the absorbed form for one token per sequence
        // (scores over kv_rank + rope, values over kv_rank), else the decompressed form (the cache
        // expanded through kv_b, then scores over qk_head and values over v_dim).
        const double seqs = double(std::max(sequences, 1));
        const double m = std::max(1.0, double(tokens) / seqs);
        const double positions = double(context) + (m + 1) / 2;  // average visible per token
        const double cache_bytes = seqs * (double(context) + m) * double(d.cache_width()) * 4;
        double flops;
        if (m == 1) {
            flops = seqs * 2.0 * double(d.n_heads) * double(2 * d.kv_rank + d.rope_dim) * positions;
        } else {
            flops = seqs * (2.0 * (double(context) + m) * double(d.kv_rank) * double(d.n_heads * (d.nope + d.v_dim)) +
                            2.0 * m * positions * double(d.n_heads) * double(d.qk_head + d.v_dim));
        }
        s += std::max(cache_bytes / bw_, flops / flops_);
        return s + launch_ * (kernels + 2);
    }
    double shared_expert(int layer, int64_t tokens) const override {
        double s = 0;
        for (const auto& t : model_.plan.layers[size_t(layer)].dense.tensors)
            if (is_shared(t.role)) s += product(t, double(tokens)) + launch_;
        return s;
    }
    double router(int layer, int64_t tokens) const override {
        for (const auto& t : model_.plan.layers[size_t(layer)].vectors.tensors)
            if (t.role == WeightRole::router) return product(t, double(tokens)) + launch_;
        return 0;
    }
    double expert(int layer, double tokens) const override {
        const LayerPlan& l = model_.plan.layers[size_t(layer)];
        if (l.experts.empty()) return 0;
        double s = 0;
        for (const auto& t : l.experts.front().tensors) s += product(t, tokens) + launch_;
        return s;
    }
    double head(int64_t rows) const override {
        for (const auto& t : model_.plan.globals.tensors)
            if (t.role == WeightRole::lm_head) return product(t, double(rows)) + launch_;
        return 0;
    }
    std::string describe() const override { return what_; }

private:
    double product(const PlannedTensor& t, double tokens) const {
        const double bytes = double(t.extent.length + t.scales.length);
        const double flops = 2.0 * double(t.rows) * double(t.cols) * tokens;
        return std::max(bytes / bw_, flops / flops_);
    }
    const OpenModel& model_;
    double bw_, flops_, launch_;
    std::string what_;
};

}  // namespace

std::unique_ptr<ComputeTimes> measured_cpu_times(const OpenModel& model, const CpuComputeProfile& profile) {
    return std::make_unique<MeasuredCpuTimes>(model, profile);
}

std::unique_ptr<ComputeTimes> roofline_times(const OpenModel& model, double bytes_per_s, double flops_per_s,
                                             double launch_seconds, std::string what) {
    if (bytes_per_s <= 0 || flops_per_s <= 0) fail(ErrorKind::invalid_input, "compute rates must be positive");
    return std::make_unique<RooflineTimes>(model, bytes_per_s, flops_per_s, launch_seconds, std::move(what));
}

Routing Routing::uniform(const ModelLayout& d) {
    Routing r;
    r.source = "uniform";
    r.p.assign(size_t(d.n_layers) * size_t(std::max<int64_t>(d.n_experts, 0)), 0.0);
    const double p = d.n_experts > 0 ? double(d.router.top_k) / double(d.n_experts) : 0;
    for (int l = 0; l < d.n_layers; ++l)
        if (d.is_moe_layer(l))
            std::fill(r.p.begin() + ptrdiff_t(l * d.n_experts), r.p.begin() + ptrdiff_t((l + 1) * d.n_experts), p);
    return r;
}

Routing Routing::measured(const ModelLayout& d, const RoutingCounts& c, const std::string& source) {
    if (c.n_layers != d.n_layers || c.n_experts != d.n_experts)
        fail(ErrorKind::invalid_input, "{}: routing recorded on {} layers x {} experts; this model has {} x {}", source,
             c.n_layers, c.n_experts, d.n_layers, d.n_experts);
    Routing r;
    r.p = c.token_probabilities();
    r.guess_accuracy = c.guess_needed > 0 ? double(c.guess_hits) / double(c.guess_needed) : 0;
    r.source = fmt::format("measured ({}: {} steps, {} tokens; early guesses named {:.0f}% of the needed experts)", source,
                           c.steps, c.tokens, 100 * r.guess_accuracy);
    return r;
}

nlohmann::json StepPrediction::to_json() const {
    return {{"tokens", shape.tokens},         {"sequences", shape.sequences},   {"context", shape.context},
            {"experts_needed", experts_needed}, {"experts_vram", experts_device}, {"experts_ram", experts_host},
            {"experts_disk", experts_disk},   {"disk_bytes", disk_bytes},       {"copy_bytes", copy_bytes},
            {"disk_s", disk_seconds},         {"copy_s", copy_seconds},         {"compute_s", compute_seconds},
            {"step_s", seconds},              {"bound", bound}};
}

nlohmann::json PhasePrediction::to_json() const {
    nlohmann::json j = sum.to_json();
    j["phase"] = name;
    j["tokens"] = tokens;
    j["steps"] = steps;
    j["seconds"] = seconds;
    j["tokens_per_s"] = tokens_per_s();
    j.erase("step_s");
    return j;
}

PerfModel::PerfModel(const OpenModel& model, Placement placement, const ComputeTimes& compute, Routing routing,
                     LinkRates rates)
    : model_(model), placement_(std::move(placement)), compute_(compute), routing_(std::move(routing)), rates_(rates) {
    const auto& plan = model.plan;
    if (placement_.dense.size() != plan.layers.size())
        fail(ErrorKind::internal, "placement has {} layers, the model {}", placement_.dense.size(), plan.layers.size());
    for (const auto& l : plan.layers) {
        dense_bytes_.push_back(l.dense.bytes());
        expert_bytes_.push_back(l.experts.empty() ? 0 : l.experts.front().bytes());
    }
    for (const auto& t : plan.globals.tensors)
        if (t.role == WeightRole::lm_head) head_bytes_ = t.extent.length + t.scales.length;
    int64_t experts = 0;
    for (const auto& l : plan.layers) experts += int64_t(l.experts.size());
    const bool needs_disk = std::any_of(placement_.dense.begin(), placement_.dense.end(), [](Tier t) { return t == Tier::disk; }) ||
                            placement_.device_expert_entries + placement_.host_expert_entries < experts;
    if (rates_.disk_bytes_per_s <= 0 && needs_disk) fail(ErrorKind::invalid_input, "the plan streams from disk: a disk rate is needed");
    if (rates_.expert_disk_bytes_per_s <= 0) rates_.expert_disk_bytes_per_s = rates_.disk_bytes_per_s;
    if (placement_.gpu && rates_.pcie_bytes_per_s <= 0) fail(ErrorKind::invalid_input, "a GPU plan needs a host-to-device rate");
}

// Expected experts per layer by tier: entries sorted by the probability a step needs them fill
// VRAM, then RAM; entries with equal probability share what is left of a tier evenly.
std::vector<PerfModel::LayerNeeds> PerfModel::needs(const StepShape& shape) const {
    const auto& d = model_.layout;
    const int64_t E = d.n_experts;
    std::vector<LayerNeeds> out(size_t(d.n_layers));
    if (E <= 0) return out;
    struct Entry {
        double need;  // P(needed by the step)
        double p;
        int layer;
    };
    std::vector<Entry> entries;
    entries.reserve(routing_.p.size());
    const double t = double(shape.tokens);
    for (int l = 0; l < d.n_layers; ++l) {
        if (model_.plan.layers[size_t(l)].experts.empty()) continue;
        for (int64_t e = 0; e < E; ++e) {
            const double p = routing_.p[size_t(l * E + e)];
            entries.push_back({1.0 - std::pow(1.0 - std::min(p, 1.0), t), p, l});
        }
    }
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.need > b.need; });
    // A pool of B buffers that also takes the step's reads keeps about one layer's misses fewer
    // entries than it has buffers for the next visit of a layer: B - m, m = the needed experts per
    // MoE layer beyond the first B entries. An empirical rule: measured on the streamer (calibration
    // model: 2 MoE layers x 32 experts, top 8, one-token steps), pools of 16, 20, 41, 50, 59 and 63
    // buffers found 10, 12, 36, 46, 58 and 63 entries' worth of cache hits (20 and 41 without
    // speculation: 13 and 37); B - m gives 10, 14, 38, 48, 58 and 63; B - top_k (the rule before)
    // 8, 12, 33, 42, 51 and 55, far off once the pool nears the whole model.
    const double n_moe = double(std::max<int64_t>(std::count_if(model_.plan.layers.begin(), model_.plan.layers.end(),
                                                                [](const LayerPlan& l) { return !l.experts.empty(); }),
                                                  1));
    auto needed_beyond = [&](double first) {
        double s = 0;
        for (size_t i = 0; i < entries.size(); ++i) s += entries[i].need * std::clamp(double(i) + 1.0 - first, 0.0, 1.0);
        return s;
    };
    const double device_buffers = double(placement_.device_expert_entries);
    const double host_buffers = double(placement_.host_expert_entries);
    double device_left = placement_.device_pool
                             ? std::max(0.0, device_buffers - needed_beyond(device_buffers) / n_moe)
                             : device_buffers;
    double host_left = placement_.host_pool
                           ? std::max(0.0, host_buffers - needed_beyond(device_buffers + host_buffers) / n_moe)
                           : host_buffers;
    // A cold start empties caches, not a placement that holds every expert (loaded before the run).
    if (shape.cold && device_buffers + host_buffers < double(entries.size())) device_left = host_left = 0;
    for (size_t i = 0; i < entries.size();) {
        size_t j = i;
        while (j < entries.size() && std::abs(entries[j].need - entries[i].need) <= 1e-12 * std::max(entries[i].need, 1e-300)) ++j;
        const double g = double(j - i);
        const double on_device = std::min(1.0, device_left / g);
        device_left -= on_device * g;
        const double on_host = std::min(1.0 - on_device, host_left / g);
        host_left -= on_host * g;
        for (size_t k = i; k < j; ++k) {
            const Entry& x = entries[k];
            LayerNeeds& n = out[size_t(x.layer)];
            n.needed += x.need;
            n.device += x.need * on_device;
            n.host += x.need * on_host;
            n.disk += x.need * (1.0 - on_device - on_host);
            if (x.need > 0) n.compute += x.need * compute_.expert(x.layer, std::max(1.0, t * x.p / x.need));
        }
        i = j;
    }
    return out;
}

StepPrediction PerfModel::step(const StepShape& shape) const {
    const auto& d = model_.layout;
    const int L = d.n_layers;
    const bool gpu = placement_.gpu;
    const auto layer_needs = needs(shape);
    const double C = rates_.pcie_bytes_per_s;
    const double R_dense = rates_.disk_bytes_per_s;
    const double R_expert = rates_.expert_disk_bytes_per_s > 0 ? rates_.expert_disk_bytes_per_s : R_dense;

    // Three resources, each a FIFO: the disk, the host-to-device link (GPU), the computing device.
    double t_compute = 0, t_disk = 0, t_copy = 0;
    StepPrediction p;
    p.shape = shape;
    // A read of `bytes` (at disk rate R) issued at `at`; returns when its bytes are where the
    // computing device reads them.
    auto fetch = [&](Tier tier, double bytes, double R, double at, bool count) {
        double ready = at;
        if (bytes <= 0 || tier == Tier::device || (tier == Tier::host && !gpu)) return ready;
        double read_start = at, read_end = at;
        if (tier == Tier::disk) {
            read_start = std::max(t_disk, at);
            read_end = read_start + bytes / R;
            t_disk = read_end;
            if (count) p.disk_bytes += bytes, p.disk_seconds += bytes / R;
            ready = read_end;
        }
        if (gpu) {  // the copy follows the read as its pieces land, never finishing before it
            const double copy_start = std::max(t_copy, read_start);
            t_copy = std::max(copy_start + bytes / C, read_end);
            if (count) p.copy_bytes += bytes, p.copy_seconds += bytes / C;
            ready = t_copy;
        }
        return ready;
    };
    const int64_t per_sequence_tokens = std::max<int64_t>(shape.tokens / std::max(shape.sequences, 1), 1);
    const double mla_copy_bytes = gpu && !placement_.mla_on_device
                                      ? double(placement_.mla_bytes_per_position) / double(std::max(L, 1)) *
                                            double(shape.sequences) * double(shape.context + per_sequence_tokens)
                                      : 0;
    const bool speculating = std::any_of(placement_.dense.begin(), placement_.dense.end(),
                                         [](Tier t) { return t == Tier::disk; }) ||
                             std::any_of(layer_needs.begin(), layer_needs.end(), [](const LayerNeeds& n) { return n.disk > 0; });
    // A ring of D buffers streams dense segments: the layer computing and the D - 1 read (copied)
    // ahead, each evicting the one needed furthest ahead. Every buffer is in use, so over more than
    // D streamed segments none survives the cycle: each is read again every step (measured: 3 reads
    // a step with D = 2 over 3 layers); over D or fewer, each stays after its first read. The
    // streamer's ring takes the disk's reads, DeviceWeights' dense slots the copies.
    int from_disk = 0, copied = 0;
    for (Tier t : placement_.dense) {
        from_disk += t == Tier::disk;
        copied += gpu && t != Tier::device;
    }
    const bool disk_ring_keeps = !shape.cold && from_disk <= placement_.dense_buffers;
    const bool device_ring_keeps = !shape.cold && copied <= placement_.device_dense_slots;
    // Where layer l's dense segment comes from this step (the device: nothing to fetch).
    auto dense_tier = [&](int layer) {
        Tier t = placement_.dense[size_t(layer)];
        if (t == Tier::disk && disk_ring_keeps) t = Tier::host;
        if (gpu && t == Tier::host && device_ring_keeps) t = Tier::device;
        return t;
    };
    std::vector<double> dense_ready(size_t(L), 0.0);
    double step_start = 0;
    double guess_named = -1;  // when the layer before named this layer's experts
    for (int round = 0; round < 2; ++round) {
        const bool count = round == 1;
        if (count) {
            step_start = t_compute;
            p.disk_bytes = p.copy_bytes = p.disk_seconds = p.copy_seconds = p.compute_seconds = 0;
        } else {
            dense_ready[0] = fetch(dense_tier(0), double(dense_bytes_[0]), R_dense, 0, false);
        }
        const double head_ready =
            gpu && placement_.head != Tier::device ? fetch(Tier::host, double(head_bytes_), R_dense, t_compute, count) : 0;
        for (int l = 0; l < L; ++l) {
            const double begin = t_compute;
            const int next = (l + 1) % L;
            dense_ready[size_t(next)] = fetch(dense_tier(next), double(dense_bytes_[size_t(next)]), R_dense, begin, count);
            double ready = dense_ready[size_t(l)];
            if (mla_copy_bytes > 0) ready = std::max(ready, fetch(Tier::host, mla_copy_bytes, R_dense, begin, count));
            const double start = std::max(begin, ready);
            const bool moe = !model_.plan.layers[size_t(l)].experts.empty();
            double compute = compute_.dense_part(l, shape.tokens, shape.sequences, shape.context);
            if (moe) compute += compute_.router(l, shape.tokens) * (speculating ? 2 : 1);  // + the next layer's guess
            double end = start + compute;
            if (moe) {
                const LayerNeeds& n = layer_needs[size_t(l)];
                const double b = double(expert_bytes_[size_t(l)]);
                if (count) {
                    p.experts_needed += n.needed;
                    p.experts_device += n.device;
                    p.experts_host += n.host;
                    p.experts_disk += n.disk;
                }
                double landed = end;
                double from_disk = n.disk * b;
                if (speculating && routing_.guess_accuracy > 0 && guess_named >= 0 && from_disk > 0) {
                    // The disk's idle time between the guess and the router reads the guessed experts
                    // it does not hold (as many as the misses); a fraction a(t) of them are misses. A
                    // step's guess is the union of its tokens' guesses: an expert one token's guess
                    // missed is still named when another's names it, about as often as the step needs
                    // an expert at all: a(t) = 1 - (1 - a) (1 - P), P = needed / experts of the layer.
                    const double share = n.needed / double(std::max<int64_t>(d.n_experts, 1));
                    const double accuracy = 1.0 - (1.0 - routing_.guess_accuracy) * (1.0 - std::min(share, 1.0));
                    const double idle_from = std::max(t_disk, guess_named);
                    const double guessed = std::min(from_disk, std::max(0.0, end - idle_from) * R_expert);
                    if (guessed > 0) {
                        landed = std::max(landed, fetch(Tier::disk, guessed, R_expert, idle_from, count));
                        from_disk -= accuracy * guessed;
                    }
                }
                if (n.host > 0) landed = std::max(landed, fetch(Tier::host, n.host * b, R_expert, end, count));
                if (from_disk > 0) landed = std::max(landed, fetch(Tier::disk, from_disk, R_expert, end, count));
                const double one = n.needed > 0 ? n.compute / n.needed : 0;
                // Experts compute as they land: never before the last has landed, never faster than compute.
                const double experts_end = std::max(end + n.compute, landed > end ? landed + one : end + n.compute);
                compute += n.compute + compute_.shared_expert(l, shape.tokens);
                end = experts_end + compute_.shared_expert(l, shape.tokens);
            }
            if (count) p.compute_seconds += compute;
            // The next layer's guess is made once this layer's router has run (a dense layer: after it).
            guess_named = moe ? start + compute_.dense_part(l, shape.tokens, shape.sequences, shape.context) +
                                    compute_.router(l, shape.tokens)
                              : end;
            t_compute = end;
        }
        const double head = compute_.head(shape.logits_rows);
        t_compute = std::max(t_compute, head_ready) + head;
        if (count) p.compute_seconds += head;
    }
    p.seconds = t_compute - step_start;
    p.bound = "compute";
    double busiest = p.compute_seconds;
    if (p.disk_seconds > busiest) busiest = p.disk_seconds, p.bound = "disk";
    if (p.copy_seconds > busiest) p.bound = "pcie";
    return p;
}

namespace {
void add(StepPrediction& sum, const StepPrediction& s) {
    sum.shape = s.shape;
    sum.experts_needed += s.experts_needed;
    sum.experts_device += s.experts_device;
    sum.experts_host += s.experts_host;
    sum.experts_disk += s.experts_disk;
    sum.disk_bytes += s.disk_bytes;
    sum.copy_bytes += s.copy_bytes;
    sum.disk_seconds += s.disk_seconds;
    sum.copy_seconds += s.copy_seconds;
    sum.compute_seconds += s.compute_seconds;
    sum.seconds += s.seconds;
    sum.bound = s.bound;
}
}  // namespace

PhasePrediction PerfModel::prefill(const std::string& name, int64_t prompt, int64_t chunk, bool cold) const {
    PhasePrediction ph;
    ph.name = name;
    ph.tokens = prompt;
    chunk = std::max<int64_t>(chunk, 1);
    for (int64_t done = 0; done < prompt; done += chunk) {
        const int64_t n = std::min(chunk, prompt - done);
        add(ph.sum, step(StepShape{n, 1, done, 1, cold && done == 0}));
        ++ph.steps;
    }
    ph.seconds = ph.sum.seconds;
    return ph;
}

PhasePrediction PerfModel::decode(const std::string& name, int sequences, int64_t context, int64_t steps) const {
    PhasePrediction ph;
    ph.name = name;
    ph.tokens = int64_t(sequences) * steps;
    // Steps differ only in context; the middle one stands for all (attention grows linearly).
    const StepPrediction s = step(StepShape{sequences, sequences, context + steps / 2, sequences});
    for (int64_t i = 0; i < steps; ++i) add(ph.sum, s);
    ph.steps = steps;
    ph.seconds = ph.sum.seconds;
    return ph;
}

}  // namespace sluice
