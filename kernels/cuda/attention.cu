#include "kernels/cuda/attention.hpp"

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/warp_reduce.cuh"

namespace sluice::cuda {

namespace {

constexpr int kHeadsPerBlock = 8;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

using detail::warp_max;
using detail::warp_sum;

// Dynamic shared memory: the group's queries, kHeadsPerBlock * (kv_rank + rope_dim) floats.
__global__ void absorbed_kernel(int n_heads, int kv_rank, int rope_dim, float scale, const float* q_latent,
                                const float* q_rope, const float* cache_latent, const float* cache_rope,
                                const int64_t* n_visible, int64_t n_ctx, float* out, float* scores_all) {
    SLUICE_DYNAMIC_SHARED(float, q);
    __shared__ float head_inv_sum[kHeadsPerBlock];
    const int t = blockIdx.y;
    const int h0 = blockIdx.x * kHeadsPerBlock;
    const int nh = min(kHeadsPerBlock, n_heads - h0);
    const int width = kv_rank + rope_dim;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t nv = n_visible[t];
    for (int i = threadIdx.x; i < nh * width; i += blockDim.x) {
        const int g = i / width, d = i % width;
        const int64_t h = h0 + g;
        q[i] = d < kv_rank ? q_latent[(int64_t(t) * n_heads + h) * kv_rank + d]
                           : q_rope[(int64_t(t) * n_heads + h) * rope_dim + (d - kv_rank)];
    }
    __syncthreads();
    // Scores: a warp per cache row, all heads of the group against that row.
    float* scores = scores_all + (int64_t(t) * gridDim.x + blockIdx.x) * kHeadsPerBlock * n_ctx;
    for (int64_t j = warp; j < nv; j += kWarps) {
        float dots[kHeadsPerBlock];
#pragma unroll
        for (int g = 0; g < kHeadsPerBlock; ++g) dots[g] = 0.0f;
        const float* c = cache_latent + j * kv_rank;
        const float* kr = cache_rope + j * rope_dim;
        for (int d = lane; d < width; d += 32) {
            const float v = d < kv_rank ? c[d] : kr[d - kv_rank];
#pragma unroll
            for (int g = 0; g < kHeadsPerBlock; ++g)
                if (g < nh) dots[g] += q[g * width + d] * v;
        }
#pragma unroll
        for (int g = 0; g < kHeadsPerBlock; ++g) {
            const float s = warp_sum(dots[g]);
            if (lane == 0 && g < nh) scores[g * n_ctx + j] = scale * s;
        }
    }
    __syncthreads();
    // Softmax per head: warp g handles head g (kWarps == kHeadsPerBlock).
    if (warp < nh) {
        float* s = scores + warp * n_ctx;
        float m = -INFINITY;
        for (int64_t j = lane; j < nv; j += 32) m = fmaxf(m, s[j]);
        m = warp_max(m);
        float sum = 0.0f;
        for (int64_t j = lane; j < nv; j += 32) sum += (s[j] = expf(s[j] - m));
        sum = warp_sum(sum);
        if (lane == 0) {
            head_inv_sum[warp] = 1.0f / sum;
        }
    }
    __syncthreads();
    // Weighted sum of latent rows: thread owns columns d, d + kThreads, ...; each row read once
    // (coalesced) for all heads of the group.
    for (int d = threadIdx.x; d < kv_rank; d += blockDim.x) {
        float acc[kHeadsPerBlock];
#pragma unroll
        for (int g = 0; g < kHeadsPerBlock; ++g) acc[g] = 0.0f;
        for (int64_t j = 0; j < nv; ++j) {
            const float v = cache_latent[j * kv_rank + d];
#pragma unroll
            for (int g = 0; g < kHeadsPerBlock; ++g)
                if (g < nh) acc[g] += scores[g * n_ctx + j] * v;
        }
        for (int g = 0; g < nh; ++g)
            out[(int64_t(t) * n_heads + h0 + g) * kv_rank + d] = acc[g] * head_inv_sum[g];
    }
}

}  // namespace

int64_t attention_scratch_floats(const cpu::AttentionShape& shape, int64_t n_tokens, int64_t n_ctx) {
    const int64_t groups = (shape.n_heads + kHeadsPerBlock - 1) / kHeadsPerBlock;
    return n_tokens * groups * kHeadsPerBlock * n_ctx;
}

void mla_attention_absorbed(const cpu::AttentionShape& shape, int64_t n_tokens, const float* q_latent,
                            const float* q_rope, const float* cache_latent, const float* cache_rope,
                            const int64_t* n_visible, int64_t n_ctx, float* out, float* scratch, cudaStream_t stream) {
    static_assert(kWarps == kHeadsPerBlock, "softmax assigns one warp per head of the group");
    if (n_tokens == 0 || shape.n_heads == 0) return;
    const dim3 grid(unsigned((shape.n_heads + kHeadsPerBlock - 1) / kHeadsPerBlock), unsigned(n_tokens));
    const size_t shared_bytes = size_t(kHeadsPerBlock) * size_t(shape.kv_rank + shape.rope_dim) * sizeof(float);
    launch_kernel(absorbed_kernel, grid, kThreads, shared_bytes, stream, shape.n_heads, shape.kv_rank, shape.rope_dim,
                  shape.scale, q_latent, q_rope, cache_latent, cache_rope, n_visible, n_ctx, out, scratch);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sluice::cuda
