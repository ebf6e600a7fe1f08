#include "kernels/cuda/cublas_api.hpp"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "core/error.hpp"

namespace sluice::cuda {

namespace {

#ifdef SLUICE_CUDA_EMULATED
CublasApi load() {
    return {&cublasCreate, &cublasDestroy, &cublasSetStream, &cublasSgemm, &cublasSgemmStridedBatched, &cublasGemmEx};
}
#else
template <typename F>
void bind(void* library, const char* name, F& out) {
    out = reinterpret_cast<F>(dlsym(library, name));
    if (!out) fail(ErrorKind::unsupported, "cuBLAS: {} not found in the loaded library ({})", name, dlerror());
}

CublasApi load() {
    // The soname of the toolkit built against first, then the unversioned name.
    const std::string versioned = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* library = dlopen(versioned.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library) library = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
    if (!library) fail(ErrorKind::unsupported, "cannot load {} for the CUDA backend: {}", versioned, dlerror());
    CublasApi api;
    bind(library, "cublasCreate_v2", api.create);
    bind(library, "cublasDestroy_v2", api.destroy);
    bind(library, "cublasSetStream_v2", api.set_stream);
    bind(library, "cublasSgemm_v2", api.sgemm);
    bind(library, "cublasSgemmStridedBatched", api.sgemm_strided_batched);
    bind(library, "cublasGemmEx", api.gemm_ex);
    return api;  // the library stays loaded for the process
}
#endif

}  // namespace

const CublasApi& cublas() {
    static std::once_flag once;
    static CublasApi api;
    static std::string error;
    std::call_once(once, [] {
        try {
            api = load();
        } catch (const Error& e) {
            error = e.what();
        }
    });
    if (!error.empty()) fail(ErrorKind::unsupported, "{}", error);
    return api;
}

const char* cublas_status_name(int status) {
    switch (status) {
        case 0: return "CUBLAS_STATUS_SUCCESS";
        case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
        case 7: return "CUBLAS_STATUS_INVALID_VALUE";
        case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
        case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "unknown cuBLAS status";
    }
}

}  // namespace sluice::cuda
