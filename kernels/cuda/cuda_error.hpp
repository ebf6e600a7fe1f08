// CUDA and cuBLAS status codes turned into sluice::Error (kind internal: a device call that fails
// is a bug or a broken device, never bad input). Declared without fmt so .cu files can include it.
#pragma once

#include "kernels/block_type.hpp"

#include <cstddef>

namespace sluice::cuda {

// Throws sluice::Error naming the call, the CUDA error name and text, and the source line.
[[noreturn]] void throw_cuda_error(int code, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(int code, const char* call, const char* file, int line);
// A device allocation the device refused: out_of_memory (a budget the machine cannot meet), not a bug.
[[noreturn]] void throw_allocation_error(int code, size_t bytes, const char* what);
// Throws sluice::Error (kind unsupported) naming the operation, the weight type and the problem:
// a type with no device kernel, or rows not aligned for the type's block loads.
[[noreturn]] void throw_weight_error(const char* op, DType type, const char* problem);

}  // namespace sluice::cuda

#define SLUICE_CUDA_CHECK(call)                                                                  \
    do {                                                                                         \
        const auto sluice_cuda_status_ = (call);                                                 \
        if (int(sluice_cuda_status_) != 0)                                                       \
            ::sluice::cuda::throw_cuda_error(int(sluice_cuda_status_), #call, __FILE__, __LINE__); \
    } while (0)

#define SLUICE_CUBLAS_CHECK(call)                                                                  \
    do {                                                                                           \
        const auto sluice_cublas_status_ = (call);                                                 \
        if (int(sluice_cublas_status_) != 0)                                                       \
            ::sluice::cuda::throw_cublas_error(int(sluice_cublas_status_), #call, __FILE__, __LINE__); \
    } while (0)
