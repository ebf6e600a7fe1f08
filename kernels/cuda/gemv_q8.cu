// The fused decode GEMV (gemv.hpp, gemv_batched_q8): activations quantised on the device to int8
// exactly as the CPU's fused path quantises them (kernels/cpu/quantize_activations.hpp: the same
// scales, the same round-to-nearest-even, the same block structs), then one warp per weight row
// and one 32-weight group per lane dotting the group's integer quants with them four at a time
// (dp4a). Activations cost 1 byte per column instead of 4 and a group is a handful of integer
// instructions where the fp32 path converts and scales every weight; the integer sums are the
// CPU's, so the two backends differ only in the order of float additions.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>

#include "kernels/cpu/quantize_activations.hpp"
#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/device_memory.hpp"
#include "kernels/cuda/gemv.hpp"
#include "kernels/cuda/quant_codecs.cuh"
#include "kernels/cuda/warp_reduce.cuh"

namespace sluice::cuda {

namespace {

using cpu::ActivationBlockQ8K;
using cpu::ActivationGroupQ8;
using detail::Codec;

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxTokensPerLaunch = 8;
constexpr int64_t kActivationBytesPer256 = 320;  // both layouts
static_assert(sizeof(ActivationBlockQ8K) == kActivationBytesPer256 && sizeof(ActivationGroupQ8) == kActivationBytesPer256);

unsigned warp_blocks(int64_t n_warps) { return unsigned((n_warps + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// Eight values as int8 bytes, x * inv rounded to nearest even (the CPU's round_small), and their sum.
__device__ __forceinline__ uint2 quantize8(const float* v, float inv, int& sum) {
    uint32_t word[2] = {0, 0};
    sum = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int q = __float2int_rn(v[k] * inv);
        sum += q;
        word[k / 4] |= uint32_t(q & 0xff) << (8 * (k % 4));
    }
    return make_uint2(word[0], word[1]);
}

// One warp per 256 columns of one token, lane l on columns 8l..8l+7: Q8_K blocks (one scale per
// 256, sums per 16) as quantize_activations_q8k writes them.
__global__ void quantize_q8k_kernel(const float* x, int64_t x_stride, int64_t n_tokens, int64_t n_blocks,
                                    ActivationBlockQ8K* out) {
    const int lane = threadIdx.x & 31;
    const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (i >= n_tokens * n_blocks) return;
    const int64_t t = i / n_blocks, b = i % n_blocks;
    const float4* p = reinterpret_cast<const float4*>(x + t * x_stride + 256 * b + 8 * lane);
    const float4 v0 = __ldg(p), v1 = __ldg(p + 1);
    const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    float amax = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) amax = fmaxf(amax, fabsf(v[k]));
    amax = detail::warp_max(amax);
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;  // cpu::q8_inverse_scale
    int sum;
    ActivationBlockQ8K& o = out[i];
    *reinterpret_cast<uint2*>(o.qs + 8 * lane) = quantize8(v, inv, sum);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if ((lane & 1) == 0) o.bsums[lane / 2] = int16_t(sum);
    if (lane == 0) o.d = inv != 0.0f ? 1.0f / inv : 0.0f;  // cpu::q8k_scale
}

// One warp per 256 columns (eight blocks of 32) of one token, four lanes per block: Q8_0-style
// blocks (scale rounded to f16, sums per 32) as quantize_activations_q8 writes them. Lanes past
// the row's last block (a partial last group) hold zeros and write nothing.
__global__ void quantize_q8_kernel(const float* x, int64_t x_stride, int64_t n_tokens, int64_t cols, int64_t n_groups,
                                   ActivationGroupQ8* out) {
    const int lane = threadIdx.x & 31;
    const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (i >= n_tokens * n_groups) return;
    const int64_t t = i / n_groups, b = i % n_groups;
    const int64_t c0 = 256 * b + 8 * lane;
    const bool live = c0 < cols;  // cols is whole blocks of 32: a block's four lanes agree
    float v[8] = {};
    if (live) {
        const float4* p = reinterpret_cast<const float4*>(x + t * x_stride + c0);
        const float4 v0 = __ldg(p), v1 = __ldg(p + 1);
        v[0] = v0.x, v[1] = v0.y, v[2] = v0.z, v[3] = v0.w, v[4] = v1.x, v[5] = v1.y, v[6] = v1.z, v[7] = v1.w;
    }
    float amax = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) amax = fmaxf(amax, fabsf(v[k]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum;
    const uint2 q = quantize8(v, inv, sum);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (!live) return;
    ActivationGroupQ8& o = out[i];
    const int slot = lane / 4;
    *reinterpret_cast<uint2*>(o.qs[slot] + 8 * (lane % 4)) = q;
    if (lane % 4 == 0) {
        o.d[slot] = __half2float(__float2half_rn(amax / 127.0f));  // cpu::q8_scale_before_f16, f16-rounded
        o.sum[slot] = sum;
    }
}

// Four weight words dotted with four activation words, added to acc.
__device__ __forceinline__ int dot16(const uint32_t* u, int4 a, int acc) {
    acc = __dp4a(int(u[0]), a.x, acc);
    acc = __dp4a(int(u[1]), a.y, acc);
    acc = __dp4a(int(u[2]), a.z, acc);
    return __dp4a(int(u[3]), a.w, acc);
}

struct FusedArgs {
    const uint8_t* w;
    int64_t rows, cols, row_bytes;
    const uint8_t* acts;  // quantised activations of token 0; token t at acts + t * act_stride
    int64_t act_stride;
    float* y;
    int64_t y_stride;
    int n_tokens;
};

template <DType T>
constexpr bool kIsKQuant = T == DType::Q2_K || T == DType::Q3_K || T == DType::Q4_K || T == DType::Q5_K || T == DType::Q6_K;

// K-quants: per group, dot = s0 * (u . a)[0..16) + s1 * (u . a)[16..32) and offset = c0 * bsum0 +
// c1 * bsum1 in int32, then d * da * dot - cd * da * offset (quant_dot_scalar.cpp per super-block).
// Q8_0 / Q4_0: (signed q . a) per block, Q4_0 taking 8 * sum(a) off its unsigned nibbles, times
// d * da.
template <DType T, int NT>
__global__ void gemv_q8_kernel(FusedArgs a) {
    const int lane = threadIdx.x & 31;
    const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (r >= a.rows) return;
    const uint8_t* row = a.w + r * a.row_bytes;
    const int64_t n_groups = a.cols / 32;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int64_t g = lane; g < n_groups; g += 32) {
        const auto q = Codec<T>::unpack(row, g);
        const int gi = int(g % 8);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t >= a.n_tokens) break;
            if constexpr (kIsKQuant<T>) {
                const auto* blk = reinterpret_cast<const ActivationBlockQ8K*>(a.acts + t * a.act_stride) + g / 8;
                const int4* qs = reinterpret_cast<const int4*>(blk->qs + 32 * gi);
                const int p0 = dot16(q.u, __ldg(qs), 0), p1 = dot16(q.u + 4, __ldg(qs + 1), 0);
                const uint32_t bsums = __ldg(reinterpret_cast<const unsigned int*>(blk->bsums + 2 * gi));
                const int dot = q.s[0] * p0 + q.s[1] * p1;
                const int offset = q.c[0] * int(int16_t(bsums & 0xffff)) + q.c[1] * int(int16_t(bsums >> 16));
                const float da = __ldg(&blk->d);
                acc[t] += q.d * da * float(dot) - q.cd * da * float(offset);
            } else {
                const auto* grp = reinterpret_cast<const ActivationGroupQ8*>(a.acts + t * a.act_stride) + g / 8;
                const int4* qs = reinterpret_cast<const int4*>(grp->qs[gi]);
                int s = dot16(q.u + 4, __ldg(qs + 1), dot16(q.u, __ldg(qs), 0));
                if constexpr (T == DType::Q4_0) s -= 8 * __ldg(&grp->sum[gi]);
                acc[t] += float(s) * (q.d * __ldg(&grp->d[gi]));
            }
        }
    }
    detail::write_row_sums(acc, a.n_tokens, a.y, a.y_stride, r, lane);
}

template <typename F>
bool visit_q8_type(DType type, F&& f) {
    switch (type) {
        case DType::Q8_0: f(detail::TypeTag<DType::Q8_0>{}); return true;
        case DType::Q4_0: f(detail::TypeTag<DType::Q4_0>{}); return true;
        case DType::Q2_K: f(detail::TypeTag<DType::Q2_K>{}); return true;
        case DType::Q3_K: f(detail::TypeTag<DType::Q3_K>{}); return true;
        case DType::Q4_K: f(detail::TypeTag<DType::Q4_K>{}); return true;
        case DType::Q5_K: f(detail::TypeTag<DType::Q5_K>{}); return true;
        case DType::Q6_K: f(detail::TypeTag<DType::Q6_K>{}); return true;
        default: return false;
    }
}

bool x_rows_aligned(const float* x, int64_t x_stride, int64_t n_tokens) {
    return (reinterpret_cast<uintptr_t>(x) & 15) == 0 && (x_stride % 4 == 0 || n_tokens == 1);
}

// The quantised activations of a call, one buffer per stream: calls on one stream run in order,
// so the next call's quantisation never overwrites what a running GEMV reads. Grown to the largest
// call and kept, so steady-state calls allocate nothing (a growing call first waits for the
// stream, whose pending kernels may still read the old buffer).
uint8_t* activation_scratch(cudaStream_t stream, size_t bytes) {
    static std::mutex mutex;
    static std::map<cudaStream_t, DeviceBuffer> buffers;
    const std::lock_guard lock(mutex);
    DeviceBuffer& b = buffers[stream];
    if (b.size_bytes() < bytes) {
        if (b.data()) SLUICE_CUDA_CHECK(cudaStreamSynchronize(stream));
        b = DeviceBuffer(bytes);
    }
    return b.as<uint8_t>();
}

}  // namespace

bool has_q8_gemv_kernel(DType type) { return visit_q8_type(type, [](auto) {}); }

void quantize_activations_q8(const float* x, int64_t x_stride, int64_t n_tokens, int64_t cols, void* out,
                             cudaStream_t stream) {
    if (cols % 32 != 0 || !x_rows_aligned(x, x_stride, n_tokens))
        throw_cuda_error(int(cudaErrorInvalidValue), "quantize_activations_q8: cols not whole blocks of 32 or x not 16-byte aligned",
                         __FILE__, __LINE__);
    const int64_t n_groups = (cols + 255) / 256;
    if (n_tokens * n_groups == 0) return;
    launch_kernel(quantize_q8_kernel, warp_blocks(n_tokens * n_groups), 32 * kWarpsPerBlock, 0, stream, x, x_stride, n_tokens, cols, n_groups, static_cast<ActivationGroupQ8*>(out));
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void quantize_activations_q8k(const float* x, int64_t x_stride, int64_t n_tokens, int64_t cols, void* out,
                              cudaStream_t stream) {
    if (cols % 256 != 0 || !x_rows_aligned(x, x_stride, n_tokens))
        throw_cuda_error(int(cudaErrorInvalidValue), "quantize_activations_q8k: cols not whole blocks of 256 or x not 16-byte aligned",
                         __FILE__, __LINE__);
    const int64_t n_blocks = cols / 256;
    if (n_tokens * n_blocks == 0) return;
    launch_kernel(quantize_q8k_kernel, warp_blocks(n_tokens * n_blocks), 32 * kWarpsPerBlock, 0, stream, x, x_stride, n_tokens, n_blocks, static_cast<ActivationBlockQ8K*>(out));
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void gemv_batched_q8(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
                     cudaStream_t stream) {
    if (w.rows == 0 || n_tokens == 0) return;
    const int64_t act_stride = (w.cols + 255) / 256 * kActivationBytesPer256;
    const bool known = visit_q8_type(w.type, [&](auto type_tag) {
        constexpr DType T = decltype(type_tag)::value;
        if (!detail::rows_meet_alignment<T>(w.data, w.bytes_per_row()))
            throw_weight_error("gemv_q8", T, "rows not aligned for the block loads (device pointer and row bytes)");
        uint8_t* acts = activation_scratch(stream, size_t(n_tokens * act_stride));
        if constexpr (kIsKQuant<T>)
            quantize_activations_q8k(x, x_stride, n_tokens, w.cols, acts, stream);
        else
            quantize_activations_q8(x, x_stride, n_tokens, w.cols, acts, stream);
        const dim3 block(32 * kWarpsPerBlock), grid(warp_blocks(w.rows));
        for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokensPerLaunch) {
            const int nt = int(std::min<int64_t>(kMaxTokensPerLaunch, n_tokens - t0));
            const FusedArgs a{static_cast<const uint8_t*>(w.data), w.rows, w.cols, w.bytes_per_row(), acts + t0 * act_stride,
                              act_stride, y + t0 * y_stride, y_stride, nt};
            if (nt == 1)
                launch_kernel(gemv_q8_kernel<T, 1>, grid, block, 0, stream, a);
            else if (nt <= 4)
                launch_kernel(gemv_q8_kernel<T, 4>, grid, block, 0, stream, a);
            else
                launch_kernel(gemv_q8_kernel<T, kMaxTokensPerLaunch>, grid, block, 0, stream, a);
            SLUICE_CUDA_CHECK(cudaGetLastError());
        }
    });
    if (!known) throw_weight_error("gemv_q8", w.type, "no fused (int8) device kernel for this type");
}

}  // namespace sluice::cuda
