#include "kernels/cuda/gemm.hpp"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cublas_api.hpp"
#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/quant_codecs.cuh"

namespace sluice::cuda {

namespace {

__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }

// A decoded group of 32 stored with 16-byte vector stores (the group's start is 16-byte aligned
// whenever `out` is: rows hold whole groups), else one by one.
__device__ __forceinline__ void store_vectors(float* o, const float* v) {
#pragma unroll
    for (int i = 0; i < 8; ++i) reinterpret_cast<float4*>(o)[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}
__device__ __forceinline__ uint32_t bf16_pair(float lo, float hi) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&p);
}
__device__ __forceinline__ void store_vectors(__nv_bfloat16* o, const float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
        reinterpret_cast<uint4*>(o)[i] = make_uint4(bf16_pair(v[8 * i], v[8 * i + 1]), bf16_pair(v[8 * i + 2], v[8 * i + 3]),
                                                    bf16_pair(v[8 * i + 4], v[8 * i + 5]), bf16_pair(v[8 * i + 6], v[8 * i + 7]));
}

// Block-quantised types: one thread per 32-weight group of one row; Out is __nv_bfloat16 or float.
template <DType T, typename Out>
__global__ void dequantize_quant_kernel(const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes, Out* out) {
    const int64_t groups_per_row = cols / 32;
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * groups_per_row) return;
    const int64_t r = i / groups_per_row, g = i % groups_per_row;
    float v[32];
    detail::Codec<T>::decode(w + r * row_bytes, g, v);
    Out* o = out + r * cols + g * 32;
    if ((reinterpret_cast<uintptr_t>(out) & 15) == 0) {
        store_vectors(o, v);
    } else {
#pragma unroll
        for (int j = 0; j < 32; ++j) store(o + j, v[j]);
    }
}

// Plain types, any row length: one thread per 32 columns of one row.
template <DType T, typename Out>
__global__ void dequantize_plain_kernel(const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes,
                                        const float* scales, int64_t scale_row_offset, Out* out) {
    const int64_t groups_per_row = (cols + 31) / 32;
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * groups_per_row) return;
    const int64_t r = i / groups_per_row, g = i % groups_per_row;
    const uint8_t* row = w + r * row_bytes;
    Out* o = out + r * cols + g * 32;
    float scale = 1.0f;
    if constexpr (T == DType::FP8_E4M3_B128)
        scale = scales[((scale_row_offset + r) / 128) * ((cols + 127) / 128) + (g * 32) / 128];
    const int64_t n = cols - g * 32 < 32 ? cols - g * 32 : 32;
    for (int j = 0; j < n; ++j) store(o + j, detail::plain_weight<T>(row, g * 32 + j) * scale);
}

__global__ void f32_to_bf16_kernel(const float* in, int64_t in_stride, int64_t n_rows, int64_t cols,
                                   __nv_bfloat16* out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_rows * cols) return;
    const int64_t r = i / cols, c = i % cols;
    out[i] = __float2bfloat16_rn(in[r * in_stride + c]);
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace

template <typename Out>
void dequantize(const Matrix& w, Out* out, cudaStream_t stream) {
    const int64_t n = w.rows * ((w.cols + 31) / 32);
    if (n == 0) return;
    constexpr int threads = 256;
    const auto* data = static_cast<const uint8_t*>(w.data);
    const int64_t rb = w.bytes_per_row();
    auto plain = [&](auto type_tag) {
        constexpr DType T = decltype(type_tag)::value;
        launch_kernel(dequantize_plain_kernel<T, Out>, blocks_for(n, threads), threads, 0, stream, data, w.rows, w.cols, rb, w.block_scales,
                                                                                       w.scale_row_offset, out);
    };
    switch (w.type) {
        case DType::F32: plain(detail::TypeTag<DType::F32>{}); break;
        case DType::F16: plain(detail::TypeTag<DType::F16>{}); break;
        case DType::BF16: plain(detail::TypeTag<DType::BF16>{}); break;
        case DType::FP8_E4M3_B128: plain(detail::TypeTag<DType::FP8_E4M3_B128>{}); break;
        default: {
            const bool known = detail::visit_quant_type(w.type, [&](auto type_tag) {
                constexpr DType T = decltype(type_tag)::value;
                if (!detail::rows_meet_alignment<T>(data, rb))
                    throw_weight_error("dequantize", T, "rows not aligned for the block loads (device pointer and row bytes)");
                launch_kernel(dequantize_quant_kernel<T, Out>, blocks_for(n, threads), threads, 0, stream, data, w.rows, w.cols, rb, out);
            });
            if (!known) throw_weight_error("dequantize", w.type, "no device kernel for this type");
        }
    }
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

void dequantize_to_bf16(const Matrix& w, void* out_bf16, cudaStream_t stream) {
    dequantize(w, static_cast<__nv_bfloat16*>(out_bf16), stream);
}

void dequantize_to_f32(const Matrix& w, float* out, cudaStream_t stream) { dequantize(w, out, stream); }

void convert_f32_to_bf16(const float* in, int64_t in_stride, int64_t n_rows, int64_t cols, void* out_bf16,
                         cudaStream_t stream) {
    const int64_t n = n_rows * cols;
    if (n == 0) return;
    launch_kernel(f32_to_bf16_kernel, blocks_for(n, 256), 256, 0, stream, in, in_stride, n_rows, cols,
                  static_cast<__nv_bfloat16*>(out_bf16));
    SLUICE_CUDA_CHECK(cudaGetLastError());
}

Gemm::Gemm() {
    cublasHandle_t h = nullptr;
    SLUICE_CUBLAS_CHECK(cublas().create(&h));
    handle_ = h;
}

Gemm::~Gemm() {
    if (handle_) cublas().destroy(handle_);
}

void Gemm::reserve(int64_t max_weight_tile_elems, int64_t max_activation_elems) {
    weight_bf16_.ensure(size_t(max_weight_tile_elems) * 2);
    activation_bf16_.ensure(size_t(max_activation_elems) * 2);
}

void Gemm::run(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
               cudaStream_t stream) {
    if (w.rows == 0 || n_tokens == 0) return;
    SLUICE_CUBLAS_CHECK(cublas().set_stream(handle_, stream));
    const float alpha = 1.0f, beta = 0.0f;
    // Row-major Y [n, rows] is column-major [rows, n]; W row-major [rows, cols] is column-major
    // [cols, rows], hence op(A) = T with lda = cols; X row-major [n, cols] is column-major [cols, n].
    const int n = int(n_tokens), k = int(w.cols);
    if (w.type == DType::F32) {
        SLUICE_CUBLAS_CHECK(cublas().sgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), n, k, &alpha,
                                        static_cast<const float*>(w.data), k, x, int(x_stride), &beta, y,
                                        int(y_stride)));
        return;
    }
    if (size_t(n_tokens * w.cols) * 2 > activation_bf16_.size_bytes())
        throw_cuda_error(int(cudaErrorInvalidValue), "Gemm::run: activations larger than Gemm::reserve allowed",
                         __FILE__, __LINE__);
    convert_f32_to_bf16(x, x_stride, n_tokens, w.cols, activation_bf16_.data(), stream);
    // BF16 weights are used in place; other types are dequantised to BF16 a tile of rows at a time,
    // so the scratch stays a fixed size whatever the matrix (the V3 head is 926 M weights).
    const int64_t tile_rows = w.type == DType::BF16 ? w.rows : int64_t(weight_bf16_.size_bytes() / 2) / w.cols;
    if (tile_rows <= 0)
        throw_cuda_error(int(cudaErrorInvalidValue), "Gemm::run: a weight row is wider than Gemm::reserve allowed",
                         __FILE__, __LINE__);
    for (int64_t r0 = 0; r0 < w.rows; r0 += tile_rows) {
        const int64_t rows = w.rows - r0 < tile_rows ? w.rows - r0 : tile_rows;
        const Matrix tile = w.row_slice(r0, rows);
        const void* a = tile.data;
        if (w.type != DType::BF16) {
            dequantize_to_bf16(tile, weight_bf16_.data(), stream);
            a = weight_bf16_.data();
        }
        SLUICE_CUBLAS_CHECK(cublas().gemm_ex(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), n, k, &alpha, a, CUDA_R_16BF, k,
                                         activation_bf16_.data(), CUDA_R_16BF, k, &beta, y + r0, CUDA_R_32F,
                                         int(y_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

}  // namespace sluice::cuda
