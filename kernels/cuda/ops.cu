#include "kernels/cuda/ops.hpp"

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/router_check.hpp"

namespace sluice::cuda {

namespace {

constexpr int kRowThreads = 256;

// Sum (or max) over the block; every thread gets the result. `shared` holds 32 floats.
template <bool Max>
__device__ float block_reduce(float v, float* shared) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = Max ? fmaxf(v, other) : v + other;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // `shared` may still be read by a previous reduction
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int n_warps = (blockDim.x + 31) / 32;
    v = lane < n_warps ? shared[lane] : (Max ? -INFINITY : 0.0f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = Max ? fmaxf(v, other) : v + other;
    }
    return v;
}

__global__ void rms_norm_kernel(const float* x, int64_t x_stride, const float* w, float eps, int64_t n, float* out,
                                int64_t out_stride) {
    __shared__ float shared[32];
    const float* xr = x + blockIdx.x * x_stride;
    float* o = out + blockIdx.x * out_stride;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_reduce<false>(ss, shared);
    const float inv = rsqrtf(ss / float(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = w[i] * (xr[i] * inv);
}

__global__ void rope_kernel(float* x, int n_heads, int64_t token_stride, int64_t head_stride, int dim,
                            const int64_t* positions, const float* freq, float magnitude) {
    const int t = blockIdx.x;
    const float p = float(positions[t]);
    const int pairs = dim / 2;
    for (int i = threadIdx.x; i < n_heads * pairs; i += blockDim.x) {
        const int h = i / pairs, k = i % pairs;
        float* v = x + t * token_stride + h * head_stride + 2 * k;
        const float angle = p * freq[k];  // fp32, as the CPU path and the official implementation
        float s, c;
        sincosf(angle, &s, &c);
        c *= magnitude;
        s *= magnitude;
        const float a = v[0], b = v[1];
        v[0] = a * c - b * s;
        v[1] = a * s + b * c;
    }
}

__global__ void silu_mul_kernel(const float* gate, const float* up, int64_t n, float* out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

__global__ void gather_kernel(const float* rows, const int32_t* index, int64_t width, float* out) {
    const float* src = rows + int64_t(index[blockIdx.x]) * width;
    float* dst = out + int64_t(blockIdx.x) * width;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

__global__ void combine_kernel(const float* expert_out, const int32_t* token_slots, const float* slot_weight,
                               int per_token, int64_t width, float* out) {
    const int32_t* slots = token_slots + int64_t(blockIdx.x) * per_token;
    float* o = out + int64_t(blockIdx.x) * width;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < per_token; ++j) acc += slot_weight[slots[j]] * expert_out[int64_t(slots[j]) * width + c];
        o[c] = acc;
    }
}

__global__ void softmax_kernel(float* x, int64_t n, int64_t stride) {
    __shared__ float shared[32];
    float* r = x + blockIdx.x * stride;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, r[i]);
    m = block_reduce<true>(m, shared);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (r[i] = expf(r[i] - m));
    s = block_reduce<false>(s, shared);
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) r[i] *= inv;
}

constexpr int kMaxExperts = 1024;

struct RouterArgs {
    int n_experts, top_k, n_group, topk_group;
    bool sigmoid, top2_sum, norm_topk_prob;
    float routed_scaling_factor;
};

// One block per token. Scores in parallel; the group and top-k selections (a few thousand
// comparisons) by thread 0, the same sequential rule as the CPU so ties resolve identically.
__global__ void route_kernel(const float* logits, const float* bias, RouterArgs cfg, int* expert_ids,
                             float* expert_weights) {
    __shared__ float affinity[kMaxExperts];
    __shared__ float selection[kMaxExperts];
    __shared__ float reduce[32];
    // Group state in shared memory, not thread 0's local arrays: local memory is reserved for
    // every resident thread of the device, 5 KiB each here would pin over a GiB.
    __shared__ float group_score[kMaxExperts];
    __shared__ bool kept[kMaxExperts];
    const int n = cfg.n_experts;
    const float* l = logits + int64_t(blockIdx.x) * n;
    if (cfg.sigmoid) {
        for (int e = threadIdx.x; e < n; e += blockDim.x) affinity[e] = 1.0f / (1.0f + expf(-l[e]));
    } else {
        float m = -INFINITY;
        for (int e = threadIdx.x; e < n; e += blockDim.x) m = fmaxf(m, l[e]);
        m = block_reduce<true>(m, reduce);
        float s = 0.0f;
        for (int e = threadIdx.x; e < n; e += blockDim.x) s += (affinity[e] = expf(l[e] - m));
        s = block_reduce<false>(s, reduce);
        __syncthreads();
        for (int e = threadIdx.x; e < n; e += blockDim.x) affinity[e] /= s;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n; e += blockDim.x) selection[e] = affinity[e] + (bias ? bias[e] : 0.0f);
    __syncthreads();
    if (threadIdx.x != 0) return;

    const int group_size = n / cfg.n_group;
    if (cfg.n_group > 1) {
        for (int g = 0; g < cfg.n_group; ++g) {
            float best = -INFINITY, second = -INFINITY;
            for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
                const float u = selection[e];
                if (u > best) {
                    second = best;
                    best = u;
                } else if (u > second) {
                    second = u;
                }
            }
            group_score[g] = cfg.top2_sum && group_size >= 2 ? best + second : best;
            kept[g] = false;
        }
        for (int k = 0; k < cfg.topk_group; ++k) {
            int pick = -1;
            for (int g = 0; g < cfg.n_group; ++g)
                if (!kept[g] && (pick < 0 || group_score[g] > group_score[pick])) pick = g;
            kept[pick] = true;
        }
        for (int g = 0; g < cfg.n_group; ++g)
            if (!kept[g])
                for (int e = g * group_size; e < (g + 1) * group_size; ++e) selection[e] = -INFINITY;
    }
    int* ids = expert_ids + int64_t(blockIdx.x) * cfg.top_k;
    float* weights = expert_weights + int64_t(blockIdx.x) * cfg.top_k;
    float weight_sum = 0.0f;
    for (int k = 0; k < cfg.top_k; ++k) {
        int pick = -1;
        for (int e = 0; e < n; ++e)
            if (selection[e] != -INFINITY || pick < 0) {
                bool taken = false;
                for (int j = 0; j < k; ++j) taken |= ids[j] == e;
                if (!taken && (pick < 0 || selection[e] > selection[pick])) pick = e;
            }
        ids[k] = pick;
        weights[k] = affinity[pick];
        weight_sum += affinity[pick];
    }
    const float norm = cfg.norm_topk_prob ? 1.0f / (weight_sum + 1e-20f) : 1.0f;
    for (int k = 0; k < cfg.top_k; ++k) weights[k] *= norm * cfg.routed_scaling_factor;
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace

void rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t n_rows, int64_t n, float* out,
              int64_t out_stride, cudaStream_t stream) {
    if (n_rows == 0) return;
    launch_kernel(rms_norm_kernel, unsigned(n_rows), kRowThreads, 0, stream, x, x_stride, w, eps, n, out, out_stride);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void add_inplace(float* x, const float* y, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    launch_kernel(add_kernel, blocks_for(n, 256), 256, 0, stream, x, y, n);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void gather_rows(const float* rows, const int32_t* index, int64_t n_rows, int64_t width, float* out,
                 cudaStream_t stream) {
    if (n_rows == 0) return;
    launch_kernel(gather_kernel, unsigned(n_rows), 256, 0, stream, rows, index, width, out);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void combine_slots(const float* expert_out, const int32_t* token_slots, const float* slot_weight, int64_t n_tokens,
                   int per_token, int64_t width, float* out, cudaStream_t stream) {
    if (n_tokens == 0) return;
    launch_kernel(combine_kernel, unsigned(n_tokens), 256, 0, stream, expert_out, token_slots, slot_weight, per_token, width, out);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void rope_interleaved(float* x, int64_t n_tokens, int n_heads, int64_t token_stride, int64_t head_stride, int dim,
                      const int64_t* positions, const float* freq, float magnitude, cudaStream_t stream) {
    if (n_tokens == 0) return;
    launch_kernel(rope_kernel, unsigned(n_tokens), 128, 0, stream, x, n_heads, token_stride, head_stride, dim, positions,
                  freq, magnitude);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream) {
    if (n == 0) return;
    launch_kernel(silu_mul_kernel, blocks_for(n, 256), 256, 0, stream, gate, up, n, out);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void softmax(float* x, int64_t n_rows, int64_t n, int64_t stride, cudaStream_t stream) {
    if (n_rows == 0) return;
    launch_kernel(softmax_kernel, unsigned(n_rows), kRowThreads, 0, stream, x, n, stride);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void route(const float* logits, const float* bias, const cpu::RouterConfig& config, int64_t n_tokens,
           int* expert_ids, float* expert_weights, cudaStream_t stream) {
    check_router_config(config, kMaxExperts);
    if (n_tokens == 0) return;
    const RouterArgs args{config.n_experts,
                          config.top_k,
                          config.n_group,
                          config.topk_group,
                          config.scoring == cpu::RouterConfig::Scoring::sigmoid,
                          config.group_score == cpu::RouterConfig::GroupScore::top2_sum,
                          config.norm_topk_prob,
                          config.routed_scaling_factor};
    launch_kernel(route_kernel, unsigned(n_tokens), 128, 0, stream, logits, bias, args, expert_ids, expert_weights);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sluice::cuda
