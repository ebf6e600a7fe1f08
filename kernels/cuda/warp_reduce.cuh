// Butterfly reductions over the 32 lanes of a warp: every lane ends with the result.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sluice::cuda::detail {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The end of a one-warp-per-row GEMV: each token's lane partial sums added up across the warp
// and written by lane 0 to y[t * y_stride + row].
template <int NT>
__device__ __forceinline__ void write_row_sums(const float (&acc)[NT], int n_tokens, float* y, int64_t y_stride,
                                               int64_t row, int lane) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t >= n_tokens) break;
        const float s = warp_sum(acc[t]);
        if (lane == 0) y[t * y_stride + row] = s;
    }
}

}  // namespace sluice::cuda::detail
