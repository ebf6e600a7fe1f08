#include "engine/compute_profile.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/shape_model.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/random_blocks.hpp"

namespace sluice {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The median of repeated runs of `fn` (at least 3, until about `budget` seconds have passed):
// a neighbour's burst moves it less than a mean, and it is no better than what a run gets.
template <class Fn>
double median_seconds(Fn&& fn, double budget) {
    std::vector<double> runs;
    const auto start = Clock::now();
    do {
        const auto t0 = Clock::now();
        fn();
        runs.push_back(seconds_since(t0));
    } while (runs.size() < 3 || (seconds_since(start) < budget && runs.size() < 200));
    std::nth_element(runs.begin(), runs.begin() + ptrdiff_t(runs.size() / 2), runs.end());
    return runs[runs.size() / 2];
}

// A type the random-block generator knows with about the same bits per weight, for types it does
// not (FP8 checkpoints, IQ types): their kernels differ, their bytes do not.
DType timing_type(DType type, int64_t cols) {
    if (random_blocks_supported(type) && row_fits_blocks(type, cols)) return type;
    const double bits = 8.0 * double(row_bytes(type, cols)) / double(cols);
    DType best = DType::F32;
    double best_gap = 1e9;
    for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_0, DType::BF16}) {
        if (!row_fits_blocks(t, cols)) continue;
        const double gap = std::abs(8.0 * double(row_bytes(t, cols)) / double(cols) - bits);
        if (gap < best_gap) best_gap = gap, best = t;
    }
    return best;
}

// Times products of one matrix shape on copies spread over the working set, so each product
// reads weights from memory as a freshly streamed segment is read, not from a cache.
class MatrixTimer {
public:
    MatrixTimer(ThreadPool& pool, uint64_t working_set_bytes, double budget)
        : pool_(pool), working_set_(working_set_bytes), budget_(budget) {
        memory_.allocate(size_t(working_set_bytes), size_t(2) << 20, true);
    }

    MatrixTiming time(const std::string& what, DType stored, int64_t rows, int64_t cols, const std::vector<int64_t>& tokens) {
        MatrixTiming m{what, stored, rows, cols, {}};
        const DType type = timing_type(stored, cols);
        // Large matrices are timed on a slice of rows (a product's time grows with its rows).
        const int64_t row_size = row_bytes(type, cols);
        const int64_t slice = std::clamp<int64_t>(int64_t(kSliceBytes) / row_size, 1, rows);
        const uint64_t bytes = uint64_t(slice * row_size);
        const int64_t copies = std::max<int64_t>(1, int64_t(working_set_ / bytes));
        const int64_t block_bytes = block_type(type).block_bytes;
        fill_random_blocks(type, RandomFill::gaussian_like, 1.0 / std::sqrt(double(cols)), 7, 0, memory_.data(),
                           int64_t(bytes) / block_bytes);
        for (int64_t c = 1; c < copies; ++c) std::memcpy(memory_.data() + c * bytes, memory_.data(), bytes);
        const int64_t most = *std::max_element(tokens.begin(), tokens.end());
        x_.resize(size_t(most * cols));
        for (size_t i = 0; i < x_.size(); ++i) x_[i] = float((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        y_.resize(size_t(most * slice));
        int64_t next = 0;
        for (int64_t n : tokens) {
            const double s = median_seconds(
                [&] {
                    const Matrix w{type, slice, cols, memory_.data() + (next++ % copies) * bytes, nullptr, 0};
                    cpu::gemm(w, x_.data(), cols, n, y_.data(), slice, pool_);
                },
                budget_);
            m.seconds.points.emplace_back(double(n), s * double(rows) / double(slice));
        }
        if (type != stored) m.what += fmt::format(" (timed as {})", dtype_name(type));
        return m;
    }

private:
    static constexpr uint64_t kSliceBytes = 32ull << 20;
    ThreadPool& pool_;
    uint64_t working_set_;
    double budget_;
    AlignedBuffer memory_;
    std::vector<float> x_, y_;
};

// The first MoE layer's dense segment (else the first layer's): the types the probe layer takes.
const LayerPlan& typical_layer(const ModelPlan& plan) {
    for (const auto& l : plan.layers)
        if (l.is_moe) return l;
    return plan.layers.front();
}

DType role_type(const Segment& s, WeightRole role, DType otherwise) {
    for (const auto& t : s.tensors)
        if (t.role == role) return t.type;
    return otherwise;
}

// One dense layer with the target's attention and, as its MLP, the shared expert (a tiny one when
// there is none), in the target's types; a vocabulary of 512 keeps embedding and head negligible.
std::unique_ptr<OpenModel> probe_model(const OpenModel& target) {
    ModelConfig c = target.config;
    c.n_layers = 1;
    c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 0;
    c.intermediate_size = std::max<int64_t>(c.n_shared_experts * c.moe_intermediate_size, 32);
    c.vocab_size = 512;
    c.tie_word_embeddings = false;
    const Segment& dense = typical_layer(target.plan).dense;
    const DType kv_b = role_type(dense, WeightRole::kv_b, DType::F32);
    const std::vector<std::pair<std::string, DType>> types = {
        {"attn_q_a.weight", role_type(dense, WeightRole::q_a, DType::F32)},
        {"attn_q_b.weight", role_type(dense, WeightRole::q_b, DType::F32)},
        {"attn_q.weight", role_type(dense, WeightRole::q, DType::F32)},
        {"attn_kv_a_mqa.weight", role_type(dense, WeightRole::kv_a, DType::F32)},
        {"attn_k_b.weight", role_type(dense, WeightRole::k_b, kv_b)},
        {"attn_v_b.weight", role_type(dense, WeightRole::v_b, kv_b)},
        {"attn_output.weight", role_type(dense, WeightRole::o, DType::F32)},
        {"ffn_gate.weight", role_type(dense, WeightRole::shared_gate, DType::F32)},
        {"ffn_up.weight", role_type(dense, WeightRole::shared_up, DType::F32)},
        {"ffn_down.weight", role_type(dense, WeightRole::shared_down, DType::F32)},
    };
    GgufSynthOptions base;  // F32 fits every row; the target's types replace it below
    base.expert_type = base.dense_type = base.embed_type = base.head_type = DType::F32;
    auto retype = [&](const GgufSynthTensor& t) {
        for (const auto& [suffix, type] : types)
            if (t.name.size() >= suffix.size() && t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0)
                return timing_type(type, t.ne[0]);
        return t.type;
    };
    return open_shape_model(c, base, retype, "compute probe");
}

}  // namespace

double TimeCurve::at(double tokens) const {
    if (points.empty()) return 0;
    if (tokens <= points.front().first) return points.front().second;
    for (size_t i = 1; i < points.size(); ++i)
        if (tokens <= points[i].first) {
            const auto [n0, s0] = points[i - 1];
            const auto [n1, s1] = points[i];
            return s0 + (s1 - s0) * (tokens - n0) / (n1 - n0);
        }
    return points.back().second * tokens / points.back().first;
}

nlohmann::json TimeCurve::to_json() const {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& [n, s] : points) j.push_back({{"tokens", n}, {"seconds", s}});
    return j;
}

TimeCurve TimeCurve::from_json(const nlohmann::json& j) {
    TimeCurve c;
    for (const auto& p : j) c.points.emplace_back(p.at("tokens").get<double>(), p.at("seconds").get<double>());
    return c;
}

const MatrixTiming* CpuComputeProfile::find(DType type, int64_t rows, int64_t cols) const {
    for (const auto& m : matrices)
        if (m.type == type && m.rows == rows && m.cols == cols) return &m;
    return nullptr;
}

nlohmann::json CpuComputeProfile::to_json() const {
    nlohmann::json m = nlohmann::json::array();
    for (const auto& t : matrices)
        m.push_back({{"what", t.what},
                     {"type", dtype_name(t.type)},
                     {"type_id", uint32_t(t.type)},
                     {"rows", t.rows},
                     {"cols", t.cols},
                     {"seconds", t.seconds.to_json()}});
    return {{"threads", threads},
            {"dense_part_seconds", dense_part.to_json()},
            {"absorbed_seconds_per_token_position", absorbed_seconds_per_token_position},
            {"decompressed_seconds_per_token_position", decompressed_seconds_per_token_position},
            {"matrices", m},
            {"seconds_spent", seconds_spent}};
}

CpuComputeProfile CpuComputeProfile::from_json(const nlohmann::json& j, const std::string& source) {
    CpuComputeProfile p;
    try {
        p.threads = j.at("threads").get<int>();
        p.dense_part = TimeCurve::from_json(j.at("dense_part_seconds"));
        p.absorbed_seconds_per_token_position = j.at("absorbed_seconds_per_token_position").get<double>();
        p.decompressed_seconds_per_token_position = j.at("decompressed_seconds_per_token_position").get<double>();
        p.seconds_spent = j.at("seconds_spent").get<double>();
        for (const auto& m : j.at("matrices")) {
            const uint32_t id = m.at("type_id").get<uint32_t>();
            if (!find_block_type(id)) fail(ErrorKind::invalid_input, "{}: unknown type id {}", source, id);
            p.matrices.push_back({m.at("what").get<std::string>(), DType(id), m.at("rows").get<int64_t>(),
                                  m.at("cols").get<int64_t>(), TimeCurve::from_json(m.at("seconds"))});
        }
    } catch (const nlohmann::json::exception& e) {
        fail(ErrorKind::invalid_input, "{}: compute profile: {}", source, e.what());
    }
    return p;
}

CpuComputeProfile measure_cpu_compute(const OpenModel& model, ThreadPool& pool, const ComputeProbeOptions& o) {
    const auto start = Clock::now();
    CpuComputeProfile p;
    p.threads = pool.size();

    // The dense part, as the forward pass runs it on one resident layer.
    {
        const auto probe = probe_model(model);
        const ModelWeights weights = load_resident(probe->layout, probe->plan, *probe->source);
        ResidentWeights provider(weights);
        const int64_t big = std::max<int64_t>(o.large_chunk, 8);
        const int64_t context = std::max(o.slope_context, big);
        DeepseekForward forward(probe->layout, provider, ForwardOptions{RunShape{1, context + big + 2, big}, AttentionForm::automatic},
                                pool);
        std::vector<int32_t> tokens(static_cast<size_t>(big));
        for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(1 + (i * 37) % 500);
        std::vector<float> logits(size_t(probe->layout.vocab));
        auto run = [&](int64_t from, int64_t n) {
            forward.truncate(from);
            forward.forward(std::span<const int32_t>(tokens.data(), size_t(n)), false, logits.data());
        };
        for (int64_t n : {int64_t(1), int64_t(8), big / 4, big}) {
            if (!p.dense_part.points.empty() && double(n) <= p.dense_part.points.back().first) continue;
            p.dense_part.points.emplace_back(double(n), median_seconds([&] { run(0, n); }, o.seconds_per_point));
        }
        forward.truncate(0);
        for (int64_t filled = 0; filled < context; filled += big) run(filled, std::min(big, context - filled));
        const double one_after = median_seconds([&] { run(context, 1); }, o.seconds_per_point);
        const double chunk_after = median_seconds([&] { run(context, big); }, o.seconds_per_point);
        p.absorbed_seconds_per_token_position = std::max(0.0, (one_after - p.dense_part.at(1)) / double(context));
        p.decompressed_seconds_per_token_position =
            std::max(0.0, (chunk_after - p.dense_part.at(double(big))) / double(big * context));
    }

    // Matrix products: routed experts (each distinct type and shape), router, head, dense MLPs.
    MatrixTimer timer(pool, o.working_set_bytes, o.seconds_per_point);
    auto add = [&](const char* what, const PlannedTensor& t, const std::vector<int64_t>& tokens) {
        if (t.rows <= 1 || p.find(t.type, t.rows, t.cols)) return;
        p.matrices.push_back(timer.time(fmt::format("{} {} {}x{}", what, dtype_name(t.type), t.rows, t.cols), t.type,
                                        t.rows, t.cols, tokens));
    };
    const std::vector<int64_t> expert_tokens = {1, 4, 16, 64, 256};
    const std::vector<int64_t> wide_tokens = {1, 16, 256};
    for (const auto& l : model.plan.layers) {
        for (const auto& e : l.experts)
            for (const auto& t : e.tensors) add("expert", t, expert_tokens);
        for (const auto& t : l.vectors.tensors)
            if (t.role == WeightRole::router) add("router", t, wide_tokens);
        for (const auto& t : l.dense.tensors) {
            if (t.role == WeightRole::dense_gate || t.role == WeightRole::dense_up || t.role == WeightRole::dense_down)
                add("dense mlp", t, expert_tokens);
            if (t.role == WeightRole::shared_gate || t.role == WeightRole::shared_up || t.role == WeightRole::shared_down)
                add("shared expert", t, expert_tokens);
        }
    }
    for (const auto& t : model.plan.globals.tensors)
        if (t.role == WeightRole::lm_head) add("head", t, wide_tokens);
    p.seconds_spent = seconds_since(start);
    return p;
}

}  // namespace sluice
