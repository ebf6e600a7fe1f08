#include "kernels/cuda/cuda_error.hpp"

#include <cuda_runtime_api.h>

#include <fmt/format.h>

#include "core/error.hpp"
#include "kernels/cuda/cublas_api.hpp"

namespace sluice::cuda {

void throw_cuda_error(int code, const char* call, const char* file, int line) {
    const auto err = cudaError_t(code);
    fail(ErrorKind::internal, "CUDA: {} failed with {} ({}: {}) at {}:{}", call, code, cudaGetErrorName(err),
         cudaGetErrorString(err), file, line);
}

void throw_allocation_error(int code, size_t bytes, const char* what) {
    const auto err = cudaError_t(code);
    cudaGetLastError();  // allocation failures are not sticky: clear it for the error's reader
    size_t free = 0, total = 0;
    const bool info = cudaMemGetInfo(&free, &total) == cudaSuccess;
    fail(code == int(cudaErrorMemoryAllocation) ? ErrorKind::out_of_memory : ErrorKind::internal,
         "device memory: {} of {:.1f} MiB failed ({}){}; lower --vram, --batch or --context", what,
         double(bytes) / (1 << 20), cudaGetErrorString(err),
         info ? fmt::format(" with {:.1f} of {:.1f} MiB free on the device", double(free) / (1 << 20), double(total) / (1 << 20))
              : std::string());
}

void throw_cublas_error(int code, const char* call, const char* file, int line) {
    fail(ErrorKind::internal, "cuBLAS: {} failed with {} ({}) at {}:{}", call, code,
         cublas_status_name(code), file, line);
}

void throw_weight_error(const char* op, DType type, const char* problem) {
    fail(ErrorKind::unsupported, "CUDA {}: {} weights: {}", op, dtype_name(type), problem);
}

}  // namespace sluice::cuda
