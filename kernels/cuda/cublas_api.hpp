// cuBLAS, loaded when first used. Linking libcublas maps and relocates ~215 MB that count in every
// process's RSS (measured: a program that only links it peaks at 219 MB, 3 MB without), which a
// CPU-only run under --ram cannot afford. So the library is dlopen'ed by the first CUDA backend
// and the handful of entry points sluice calls are reached through this table. The emulated
// build (cudaemu/) binds them to the emulator's functions directly.
#pragma once

#include <cublas_v2.h>

namespace sluice::cuda {

struct CublasApi {
    decltype(&cublasCreate) create = nullptr;
    decltype(&cublasDestroy) destroy = nullptr;
    decltype(&cublasSetStream) set_stream = nullptr;
    decltype(&cublasSgemm) sgemm = nullptr;
    decltype(&cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
    // Spelled out: C++ sees cublasGemmEx overloaded.
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                              const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
};

// The table, loading libcublas on the first call; throws sluice::Error (unsupported) naming the
// library and dlerror() when it cannot be loaded.
const CublasApi& cublas();

// cuBLAS status names without calling into the library (it may not be loaded).
const char* cublas_status_name(int status);

}  // namespace sluice::cuda
