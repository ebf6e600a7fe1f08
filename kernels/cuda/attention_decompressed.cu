#include "kernels/cuda/attention_decompressed.hpp"

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/warp_reduce.cuh"

namespace sluice::cuda {

namespace {

// A block per (head, group of kQueries query tokens), a warp per query: the key and value rows of
// the head are read by the group's warps together (L1), each warp keeps its scores in shared memory.
constexpr int kQueries = 8;
constexpr int kThreads = 32 * kQueries;
// Positions scored per launch: kQueries rows of them fit the default 48 KiB of shared memory.
constexpr int64_t kMaxPositions = 1024;

using detail::warp_max;
using detail::warp_sum;

__global__ void begin_kernel(int64_t rows, int v_dim, float* out, float* running_max, float* running_sum) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < rows * v_dim) out[i] = 0.0f;
    if (i < rows) {
        running_max[i] = -INFINITY;
        running_sum[i] = 0.0f;
    }
}

// Dynamic shared memory: kQueries rows of n_positions scores.
__global__ void block_kernel(int n_heads, int nope, int rope, int v_dim, int q_head_stride, float scale,
                             int64_t n_tokens, const float* q, const float* q_rope, const float* kv,
                             const float* k_rope, int64_t first, int64_t n_positions, const int64_t* n_visible,
                             float* out, float* running_max, float* running_sum) {
    SLUICE_DYNAMIC_SHARED(float, scores_all);
    const int h = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t t = int64_t(blockIdx.y) * kQueries + warp;
    if (t >= n_tokens) return;  // a whole warp leaves: no block-wide barrier follows
    float* scores = scores_all + int64_t(warp) * n_positions;
    const int64_t seen = min(n_visible[t] - first, n_positions);  // positions of this block t sees
    if (seen <= 0) return;
    const int64_t kv_head = nope + v_dim, kv_row = int64_t(n_heads) * kv_head;
    const float* qn = q + (t * n_heads + h) * q_head_stride;
    const float* qr = q_rope + (t * n_heads + h) * rope;
    float block_max = -INFINITY;
    for (int64_t j = 0; j < seen; ++j) {
        const float* k = kv + j * kv_row + int64_t(h) * kv_head;
        const float* kr = k_rope + j * rope;
        float dot = 0.0f;
        for (int d = lane; d < nope; d += 32) dot += qn[d] * k[d];
        for (int d = lane; d < rope; d += 32) dot += qr[d] * kr[d];
        dot = scale * warp_sum(dot);
        if (lane == 0) scores[j] = dot;
        block_max = fmaxf(block_max, dot);
    }
    __syncwarp();
    // Online softmax: rescale what earlier blocks summed to the new running max.
    const int64_t stat = t * n_heads + h;
    const float old_max = running_max[stat];
    const float new_max = fmaxf(old_max, block_max);
    const float carry = expf(old_max - new_max);  // 0 for the first block seen
    float sum = 0.0f;
    for (int64_t j = lane; j < seen; j += 32) {
        const float p = expf(scores[j] - new_max);
        scores[j] = p;
        sum += p;
    }
    sum = warp_sum(sum);
    __syncwarp();
    float* o = out + stat * v_dim;
    for (int d = lane; d < v_dim; d += 32) {
        float acc = 0.0f;
        for (int64_t j = 0; j < seen; ++j) acc += scores[j] * kv[j * kv_row + int64_t(h) * kv_head + nope + d];
        o[d] = o[d] * carry + acc;
    }
    if (lane == 0) {
        running_sum[stat] = running_sum[stat] * carry + sum;
        running_max[stat] = new_max;
    }
}

__global__ void end_kernel(int64_t rows, int v_dim, float* out, const float* running_sum) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < rows * v_dim) out[i] /= running_sum[i / v_dim];
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace

void mla_decompressed_begin(const cpu::DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                            float* running_max, float* running_sum, cudaStream_t stream) {
    const int64_t rows = n_tokens * shape.n_heads;
    if (rows == 0) return;
    launch_kernel(begin_kernel, blocks_for(rows * shape.v_dim, 256), 256, 0, stream, rows, shape.v_dim, out, running_max, running_sum);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void mla_attention_decompressed_block(const cpu::DecompressedAttentionShape& shape, int64_t n_tokens, const float* q,
                                      const float* q_rope, const float* kv, const float* k_rope, int64_t first,
                                      int64_t n_positions, const int64_t* n_visible, float* out, float* running_max,
                                      float* running_sum, cudaStream_t stream) {
    if (n_tokens == 0 || n_positions == 0 || shape.n_heads == 0) return;
    const dim3 grid(unsigned(shape.n_heads), blocks_for(n_tokens, kQueries));
    const int64_t kv_row = int64_t(shape.n_heads) * (shape.nope_dim + shape.v_dim);
    // The online softmax composes: a long block is folded in pieces whose scores fit shared memory.
    for (int64_t begin = 0; begin < n_positions; begin += kMaxPositions) {
        const int64_t m = n_positions - begin < kMaxPositions ? n_positions - begin : kMaxPositions;
        const size_t shared_bytes = size_t(kQueries) * size_t(m) * sizeof(float);
        launch_kernel(block_kernel, grid, kThreads, shared_bytes, stream, shape.n_heads, shape.nope_dim, shape.rope_dim, shape.v_dim, shape.q_head_stride, shape.scale, n_tokens, q, q_rope, kv + begin * kv_row, k_rope + begin * shape.rope_dim, first + begin, m, n_visible, out, running_max, running_sum);
        SLUICE_CUDA_CHECK(cudaGetLastError());
    }
}

void mla_decompressed_end(const cpu::DecompressedAttentionShape& shape, int64_t n_tokens, float* out,
                          const float* running_sum, cudaStream_t stream) {
    const int64_t rows = n_tokens * shape.n_heads;
    if (rows == 0) return;
    launch_kernel(end_kernel, blocks_for(rows * shape.v_dim, 256), 256, 0, stream, rows, shape.v_dim, out, running_sum);
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sluice::cuda
