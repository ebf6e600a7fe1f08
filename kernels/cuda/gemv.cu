#include "kernels/cuda/gemv.hpp"

#include <cuda_runtime.h>

#include "kernels/cpu/matmul.hpp"
#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/quant_codecs.cuh"
#include "kernels/cuda/warp_reduce.cuh"

namespace sluice::cuda {

namespace {

using detail::Codec;

constexpr int kWarpsPerBlock = 4;
// A batched launch keeps at most this many token sums per lane in registers.
constexpr int kMaxTokensPerLaunch = 8;

struct GemvArgs {
    const uint8_t* w;
    int64_t rows, cols, row_bytes;
    const float* scales;  // FP8 only
    int64_t scale_row_offset;
    const float* x;
    int64_t x_stride;
    float* y;
    int64_t y_stride;
    int n_tokens;
};

// Plain types: 16 bytes per lane per step, consecutive lanes on consecutive 16-byte chunks, so a
// warp step reads 512 contiguous bytes. Requires cols a multiple of the chunk's weight count.
template <DType T>
struct PlainChunk;
template <>
struct PlainChunk<DType::F32> {
    static constexpr int weights = 4;
    __device__ static void decode(uint4 v, float* w) {
        w[0] = __uint_as_float(v.x);
        w[1] = __uint_as_float(v.y);
        w[2] = __uint_as_float(v.z);
        w[3] = __uint_as_float(v.w);
    }
};
template <>
struct PlainChunk<DType::F16> {
    static constexpr int weights = 8;
    __device__ static void decode(uint4 v, float* w) {
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            w[2 * i] = detail::half_bits_to_float(uint16_t(words[i] & 0xffff));
            w[2 * i + 1] = detail::half_bits_to_float(uint16_t(words[i] >> 16));
        }
    }
};
template <>
struct PlainChunk<DType::BF16> {
    static constexpr int weights = 8;
    __device__ static void decode(uint4 v, float* w) {
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            w[2 * i] = __uint_as_float(words[i] << 16);
            w[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
        }
    }
};
template <>
struct PlainChunk<DType::FP8_E4M3_B128> {
    static constexpr int weights = 16;
    __device__ static void decode(uint4 v, float* w) {
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int k = 0; k < 4; ++k) w[4 * i + k] = detail::fp8_e4m3_to_float(uint8_t(words[i] >> (8 * k)));
    }
};

template <DType T, int NT>
__global__ void gemv_plain_kernel(GemvArgs a) {
    const int lane = threadIdx.x & 31;
    const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (r >= a.rows) return;
    constexpr int W = PlainChunk<T>::weights;
    const uint4* row = reinterpret_cast<const uint4*>(a.w + r * a.row_bytes);
    const int64_t n_chunks = a.cols / W;
    const float* scale_row = nullptr;
    if constexpr (T == DType::FP8_E4M3_B128)
        scale_row = a.scales + ((a.scale_row_offset + r) / 128) * ((a.cols + 127) / 128);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int64_t ch = lane; ch < n_chunks; ch += 32) {
        float w[W];
        PlainChunk<T>::decode(__ldg(row + ch), w);
        const int64_t c0 = ch * W;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t >= a.n_tokens) break;
            const float4* xv = reinterpret_cast<const float4*>(a.x + t * a.x_stride + c0);
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < W / 4; ++i) {
                const float4 x4 = __ldg(xv + i);
                s += w[4 * i] * x4.x + w[4 * i + 1] * x4.y + w[4 * i + 2] * x4.z + w[4 * i + 3] * x4.w;
            }
            // FP8: a 16-weight chunk never straddles a 128-column scale block.
            if constexpr (T == DType::FP8_E4M3_B128) s *= scale_row[c0 / 128];
            acc[t] += s;
        }
    }
    detail::write_row_sums(acc, a.n_tokens, a.y, a.y_stride, r, lane);
}

// Any row length and alignment: one weight per lane step (F32/F16/BF16/FP8 tails and odd shapes).
template <DType T, int NT>
__global__ void gemv_scalar_kernel(GemvArgs a) {
    const int lane = threadIdx.x & 31;
    const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (r >= a.rows) return;
    const uint8_t* row = a.w + r * a.row_bytes;
    const float* scale_row = nullptr;
    if constexpr (T == DType::FP8_E4M3_B128)
        scale_row = a.scales + ((a.scale_row_offset + r) / 128) * ((a.cols + 127) / 128);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int64_t c = lane; c < a.cols; c += 32) {
        float w = detail::plain_weight<T>(row, c);
        if constexpr (T == DType::FP8_E4M3_B128) w *= scale_row[c / 128];
#pragma unroll
        for (int t = 0; t < NT; ++t)
            if (t < a.n_tokens) acc[t] += w * a.x[t * a.x_stride + c];
    }
    detail::write_row_sums(acc, a.n_tokens, a.y, a.y_stride, r, lane);
}

// Block-quantised types: lane handles 32-weight groups lane, lane + 32, ...
template <DType T, int NT>
__global__ void gemv_quant_kernel(GemvArgs a) {
    const int lane = threadIdx.x & 31;
    const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (r >= a.rows) return;
    const uint8_t* row = a.w + r * a.row_bytes;
    const int64_t n_groups = a.cols / 32;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int64_t g = lane; g < n_groups; g += 32) {
        float w[32];
        Codec<T>::decode(row, g, w);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t >= a.n_tokens) break;
            const float4* xv = reinterpret_cast<const float4*>(a.x + t * a.x_stride + g * 32);
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float4 x4 = __ldg(xv + i);
                s += w[4 * i] * x4.x + w[4 * i + 1] * x4.y + w[4 * i + 2] * x4.z + w[4 * i + 3] * x4.w;
            }
            acc[t] += s;
        }
    }
    detail::write_row_sums(acc, a.n_tokens, a.y, a.y_stride, r, lane);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <int NT>
void launch(const Matrix& w, const GemvArgs& a, cudaStream_t stream) {
    const dim3 block(32 * kWarpsPerBlock);
    const dim3 grid(unsigned((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
    // The vector paths read x as float4: x rows must be 16-byte aligned too.
    const bool x_aligned = aligned16(a.x) && (a.x_stride % 4 == 0 || a.n_tokens == 1);
    const bool rows_aligned = aligned16(a.w) && a.row_bytes % 16 == 0;
    auto plain = [&](auto type_tag, int chunk_weights) {
        constexpr DType T = decltype(type_tag)::value;
        if (x_aligned && rows_aligned && a.cols % chunk_weights == 0)
            launch_kernel(gemv_plain_kernel<T, NT>, grid, block, 0, stream, a);
        else
            launch_kernel(gemv_scalar_kernel<T, NT>, grid, block, 0, stream, a);
    };
    switch (w.type) {
        case DType::F32: plain(std::integral_constant<DType, DType::F32>{}, 4); break;
        case DType::F16: plain(std::integral_constant<DType, DType::F16>{}, 8); break;
        case DType::BF16: plain(std::integral_constant<DType, DType::BF16>{}, 8); break;
        case DType::FP8_E4M3_B128: plain(std::integral_constant<DType, DType::FP8_E4M3_B128>{}, 16); break;
        default: {
            const bool known = detail::visit_quant_type(w.type, [&](auto type_tag) {
                constexpr DType T = decltype(type_tag)::value;
                if (!x_aligned) throw_cuda_error(int(cudaErrorMisalignedAddress), "gemv: x rows not 16-byte aligned", __FILE__, __LINE__);
                if (!detail::rows_meet_alignment<T>(a.w, a.row_bytes))
                    throw_weight_error("gemv", T, "rows not aligned for the block loads (device pointer and row bytes)");
                launch_kernel(gemv_quant_kernel<T, NT>, grid, block, 0, stream, a);
            });
            if (!known) throw_weight_error("gemv", w.type, "no device kernel for this type");
        }
    }
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool has_gemv_kernel(DType type) {
    switch (type) {
        case DType::F32:
        case DType::F16:
        case DType::BF16:
        case DType::FP8_E4M3_B128: return true;
        default: return detail::visit_quant_type(type, [](auto) {});
    }
}

void gemv_batched(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
                  int64_t y_stride, cudaStream_t stream) {
    if (w.rows == 0 || n_tokens == 0) return;
    if (cpu::quant_dot() == cpu::QuantDot::fused && has_q8_gemv_kernel(w.type))
        return gemv_batched_q8(w, x, x_stride, n_tokens, y, y_stride, stream);
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokensPerLaunch) {
        const int nt = int(std::min<int64_t>(kMaxTokensPerLaunch, n_tokens - t0));
        const GemvArgs a{static_cast<const uint8_t*>(w.data), w.rows, w.cols, w.bytes_per_row(), w.block_scales,
                         w.scale_row_offset, x + t0 * x_stride, x_stride, y + t0 * y_stride, y_stride, nt};
        if (nt == 1)
            launch<1>(w, a, stream);
        else if (nt <= 4)
            launch<4>(w, a, stream);
        else
            launch<kMaxTokensPerLaunch>(w, a, stream);
    }
}

void gemv(const Matrix& w, const float* x, float* y, cudaStream_t stream) {
    gemv_batched(w, x, w.cols, 1, y, w.rows, stream);
}

}  // namespace sluice::cuda
