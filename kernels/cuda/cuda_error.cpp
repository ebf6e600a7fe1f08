#include "kernels/cuda/cuda_error.hpp"

#include <cuda_runtime_api.h>

#include "core/error.hpp"
#include "kernels/cuda/cublas_api.hpp"

namespace sluice::cuda {

void throw_cuda_error(int code, const char* call, const char* file, int line) {
    const auto err = cudaError_t(code);
    fail(ErrorKind::internal, "CUDA: {} failed with {} ({}: {}) at {}:{}", call, code, cudaGetErrorName(err),
         cudaGetErrorString(err), file, line);
}

void throw_cublas_error(int code, const char* call, const char* file, int line) {
    fail(ErrorKind::internal, "cuBLAS: {} failed with {} ({}) at {}:{}", call, code,
         cublas_status_name(code), file, line);
}

void throw_weight_error(const char* op, DType type, const char* problem) {
    fail(ErrorKind::unsupported, "CUDA {}: {} weights: {}", op, dtype_name(type), problem);
}

}  // namespace sluice::cuda
