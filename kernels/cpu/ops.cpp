// The small ops of the forward pass: vectorised RMSNorm / SiLU / softmax (through the path
// table), YaRN RoPE tables and rotation, and the MoE router of spec §2.10.
#include "kernels/cpu/ops.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numbers>

#include "core/error.hpp"
#include "kernels/cpu/kernel_paths.hpp"

namespace sluice::cpu {
namespace {

const detail::PathKernels& active_kernels() {
    static const detail::PathKernels& kernels = detail::path_kernels(cpu_path());
    return kernels;
}

double yarn_mscale(double factor, double mscale) {
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

}  // namespace

void rms_norm(const float* x, const float* w, float eps, int64_t n, float* out) {
    active_kernels().rms_norm(x, w, eps, n, out);
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
    active_kernels().silu_mul(gate, up, n, out);
}

void softmax(float* x, int64_t n) { active_kernels().softmax(x, n); }

std::vector<float> yarn_frequencies(const RopeYarn& rope) {
    const int d = rope.dim;
    const double theta = rope.theta;
    std::vector<float> freq(size_t(d / 2));
    // corr(r): the pair index whose wavelength makes r turns over the original context.
    auto correction_dim = [&](double rotations) {
        return d * std::log(rope.original_context / (2.0 * std::numbers::pi * rotations)) / (2.0 * std::log(theta));
    };
    double low = std::max(std::floor(correction_dim(rope.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(rope.beta_slow)), double(d - 1));
    if (low == high) high += 0.001;
    for (int i = 0; i < d / 2; ++i) {
        const double inv = std::pow(theta, -2.0 * i / d);
        if (rope.factor <= 1.0f) {
            freq[size_t(i)] = float(inv);
            continue;
        }
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        freq[size_t(i)] = float(inv * (1.0 - ramp) + inv / rope.factor * ramp);
    }
    return freq;
}

float yarn_attention_factor(const RopeYarn& rope) {
    return float(yarn_mscale(rope.factor, rope.mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim));
}

float yarn_softmax_scale(const RopeYarn& rope, int qk_head_dim) {
    const double m = yarn_mscale(rope.factor, rope.mscale_all_dim);
    return float(m * m / std::sqrt(double(qk_head_dim)));
}

void rope_interleaved(float* x, int dim, int64_t pos, const float* freq, float magnitude) {
    const float p = float(pos);
    for (int i = 0; i < dim / 2; ++i) {
        const float angle = p * freq[i];  // fp32, as the official implementation
        const float c = std::cos(angle) * magnitude, s = std::sin(angle) * magnitude;
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

void route(const float* logits, const float* bias, const RouterConfig& config, int* expert_ids,
           float* expert_weights) {
    constexpr int kMaxExperts = 1024;
    const int n = config.n_experts;
    if (n <= 0 || n > kMaxExperts || config.n_group <= 0 || n % config.n_group != 0 ||
        config.topk_group <= 0 || config.topk_group > config.n_group || config.top_k <= 0 ||
        config.top_k > config.topk_group * (n / config.n_group))
        fail(ErrorKind::invalid_input, "router: inconsistent config (experts {}, groups {}, keep {}, top_k {})", n,
             config.n_group, config.topk_group, config.top_k);
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    std::array<float, kMaxExperts> affinity;   // s_e: the weights come from these
    std::array<float, kMaxExperts> selection;  // u_e = s_e + b_e: only chooses
    if (config.scoring == RouterConfig::Scoring::sigmoid) {
        for (int e = 0; e < n; ++e) affinity[size_t(e)] = 1.0f / (1.0f + std::exp(-logits[e]));
    } else {
        float max_logit = logits[0];
        for (int e = 1; e < n; ++e) max_logit = std::max(max_logit, logits[e]);
        float sum = 0.0f;
        for (int e = 0; e < n; ++e) sum += affinity[size_t(e)] = std::exp(logits[e] - max_logit);
        for (int e = 0; e < n; ++e) affinity[size_t(e)] /= sum;
    }
    for (int e = 0; e < n; ++e) selection[size_t(e)] = affinity[size_t(e)] + (bias ? bias[e] : 0.0f);

    // Group limiting: keep the topk_group groups with the best score, mask the rest with -inf.
    const int group_size = n / config.n_group;
    if (config.n_group > 1) {
        std::array<float, kMaxExperts> group_score;
        for (int g = 0; g < config.n_group; ++g) {
            float best = kNegInf, second = kNegInf;
            for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
                const float u = selection[size_t(e)];
                if (u > best) {
                    second = best;
                    best = u;
                } else if (u > second) {
                    second = u;
                }
            }
            const bool top2 = config.group_score == RouterConfig::GroupScore::top2_sum && group_size >= 2;
            group_score[size_t(g)] = top2 ? best + second : best;
        }
        std::array<bool, kMaxExperts> kept{};
        for (int k = 0; k < config.topk_group; ++k) {
            int pick = -1;
            for (int g = 0; g < config.n_group; ++g)
                if (!kept[size_t(g)] && (pick < 0 || group_score[size_t(g)] > group_score[size_t(pick)])) pick = g;
            kept[size_t(pick)] = true;
        }
        for (int g = 0; g < config.n_group; ++g)
            if (!kept[size_t(g)])
                for (int e = g * group_size; e < (g + 1) * group_size; ++e) selection[size_t(e)] = kNegInf;
    }

    // Top-k by selection score, descending; strict '>' keeps the lower index on ties.
    std::array<bool, kMaxExperts> taken{};
    float weight_sum = 0.0f;
    for (int k = 0; k < config.top_k; ++k) {
        int pick = -1;
        for (int e = 0; e < n; ++e)
            if (!taken[size_t(e)] && (pick < 0 || selection[size_t(e)] > selection[size_t(pick)])) pick = e;
        taken[size_t(pick)] = true;
        expert_ids[k] = pick;
        expert_weights[k] = affinity[size_t(pick)];
        weight_sum += affinity[size_t(pick)];
    }
    const float norm = config.norm_topk_prob ? 1.0f / (weight_sum + 1e-20f) : 1.0f;
    for (int k = 0; k < config.top_k; ++k) expert_weights[k] *= norm * config.routed_scaling_factor;
}

}  // namespace sluice::cpu
