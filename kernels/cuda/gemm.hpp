// Prefill GEMM on the device: Y[t][r] = sum_c W[r][c] X[t][c] for many tokens. F32 weights run
// cuBLAS SGEMM as stored; every other type is dequantised to a BF16 copy of W (BF16 weights are
// used in place) and multiplied with BF16 activations by cublasGemmEx on the tensor cores with
// fp32 accumulation. Activations and outputs stay f32 in memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/device_memory.hpp"
#include "kernels/matrix.hpp"

struct cublasContext;

namespace sluice::cuda {

// Writes W as BF16 [w.rows, w.cols] row-major to out (device). Any type gemv supports.
void dequantize_to_bf16(const Matrix& w, void* out_bf16, cudaStream_t stream);

// Writes W as f32 [w.rows, w.cols] row-major to out (device), FP8 block scales applied.
void dequantize_to_f32(const Matrix& w, float* out, cudaStream_t stream);

// f32 [n_rows, cols] (row stride in_stride) -> packed bf16 [n_rows, cols].
void convert_f32_to_bf16(const float* in, int64_t in_stride, int64_t n_rows, int64_t cols, void* out_bf16,
                         cudaStream_t stream);

class Gemm {
public:
    Gemm();
    ~Gemm();
    Gemm(const Gemm&) = delete;
    Gemm& operator=(const Gemm&) = delete;

    // Sizes the BF16 scratch once, before any run: a tile of dequantised weights (run() goes
    // through a larger matrix a tile of rows at a time) and the widest activations. run() never
    // allocates; it refuses activations or a single weight row larger than reserved.
    void reserve(int64_t max_weight_tile_elems, int64_t max_activation_elems);
    int64_t reserved_bytes() const { return int64_t(weight_bf16_.size_bytes() + activation_bf16_.size_bytes()); }

    // Asynchronous on `stream`; the scratch is reused by the next call on any stream, so callers
    // issue all Gemm calls of one object on one stream.
    void run(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
             cudaStream_t stream);

private:
    cublasContext* handle_ = nullptr;
    DeviceBuffer weight_bf16_;
    DeviceBuffer activation_bf16_;
};

}  // namespace sluice::cuda
