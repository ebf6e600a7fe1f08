// cudaemu: the cuBLAS GEMMs sluice calls, as reference loops (double accumulation, then one
// rounding to the output type) executed in order on the handle's stream worker. Arguments are
// checked as cuBLAS checks them, and every matrix's extent must lie inside a device allocation.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"
#include "device_state.hpp"

struct cublasContext {
    cudaStream_t stream = nullptr;
};

namespace cudaemu::detail {

namespace {

size_t type_bytes(cudaDataType t) {
    switch (t) {
        case CUDA_R_32F: return 4;
        case CUDA_R_64F: return 8;
        case CUDA_R_16F:
        case CUDA_R_16BF: return 2;
        default: return 0;
    }
}

double load(const void* base, cudaDataType t, size_t i) {
    switch (t) {
        case CUDA_R_32F: return static_cast<const float*>(base)[i];
        case CUDA_R_64F: return static_cast<const double*>(base)[i];
        case CUDA_R_16F: return float(static_cast<const __half*>(base)[i]);
        case CUDA_R_16BF: return float(static_cast<const __nv_bfloat16*>(base)[i]);
        default: return 0;
    }
}

void store(void* base, cudaDataType t, size_t i, double v) {
    switch (t) {
        case CUDA_R_32F: static_cast<float*>(base)[i] = float(v); break;
        case CUDA_R_64F: static_cast<double*>(base)[i] = v; break;
        case CUDA_R_16F: static_cast<__half*>(base)[i] = __half(float(v)); break;
        case CUDA_R_16BF: static_cast<__nv_bfloat16*>(base)[i] = __nv_bfloat16(float(v)); break;
        default: break;
    }
}

struct Gemm {
    cublasOperation_t ta, tb;
    int m, n, k;
    double alpha, beta;
    const void* a;
    cudaDataType at;
    int lda;
    long long sa;
    const void* b;
    cudaDataType bt;
    int ldb;
    long long sb;
    void* c;
    cudaDataType ct;
    int ldc;
    long long sc;
    int batch;

    void run() const {
        for (int q = 0; q < batch; ++q) {
            const size_t a0 = size_t(q) * size_t(sa), b0 = size_t(q) * size_t(sb), c0 = size_t(q) * size_t(sc);
            for (int j = 0; j < n; ++j)
                for (int i = 0; i < m; ++i) {
                    double acc = 0;
                    for (int p = 0; p < k; ++p) {
                        const size_t ai = ta == CUBLAS_OP_N ? size_t(p) * lda + i : size_t(i) * lda + p;
                        const size_t bi = tb == CUBLAS_OP_N ? size_t(j) * ldb + p : size_t(p) * ldb + j;
                        acc += load(a, at, a0 + ai) * load(b, bt, b0 + bi);
                    }
                    const size_t ci = c0 + size_t(j) * ldc + i;
                    // beta == 0: C is not read (it may hold NaN), as cuBLAS specifies.
                    store(c, ct, ci, alpha * acc + (beta == 0 ? 0.0 : beta * load(c, ct, ci)));
                }
        }
    }
};

// Elements spanned by a column-major rows x cols matrix with leading dimension ld, over a batch.
size_t extent(int rows, int cols, int ld, long long stride, int batch) {
    if (rows == 0 || cols == 0 || batch == 0) return 0;
    return size_t(cols - 1) * size_t(ld) + size_t(rows) + size_t(batch - 1) * size_t(stride);
}

cublasStatus_t submit(cublasHandle_t h, const char* api, const Gemm& g) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int a_rows = g.ta == CUBLAS_OP_N ? g.m : g.k, a_cols = g.ta == CUBLAS_OP_N ? g.k : g.m;
    const int b_rows = g.tb == CUBLAS_OP_N ? g.k : g.n, b_cols = g.tb == CUBLAS_OP_N ? g.n : g.k;
    if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0 || g.lda < std::max(1, a_rows) || g.ldb < std::max(1, b_rows) ||
        g.ldc < std::max(1, g.m) || (g.ta != CUBLAS_OP_N && g.ta != CUBLAS_OP_T) ||
        (g.tb != CUBLAS_OP_N && g.tb != CUBLAS_OP_T) || !type_bytes(g.at) || !type_bytes(g.bt) || !type_bytes(g.ct)) {
        std::fprintf(stderr, "cudaemu: %s: invalid argument (m %d n %d k %d lda %d ldb %d ldc %d)\n", api, g.m, g.n, g.k,
                     g.lda, g.ldb, g.ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (g.m == 0 || g.n == 0 || g.batch == 0) return CUBLAS_STATUS_SUCCESS;
    if (sticky_error()) return CUBLAS_STATUS_EXECUTION_FAILED;
    Device& d = device();
    std::lock_guard lock(d.mu);
    auto s = resolve_stream(h->stream);
    if (!s) return CUBLAS_STATUS_INVALID_VALUE;
    struct Span {
        const char* name;
        const void* p;
        size_t bytes;
    };
    const Span spans[] = {
        {"A", g.a, g.k == 0 ? 0 : extent(a_rows, a_cols, g.lda, g.sa, g.batch) * type_bytes(g.at)},
        {"B", g.b, g.k == 0 ? 0 : extent(b_rows, b_cols, g.ldb, g.sb, g.batch) * type_bytes(g.bt)},
        {"C", g.c, extent(g.m, g.n, g.ldc, g.sc, g.batch) * type_bytes(g.ct)},
    };
    for (const auto& sp : spans) {
        std::string problem;
        // Pinned host memory is reachable from the device under unified addressing, as cuBLAS
        // sees it on a real GPU (mapped memory: slow, but valid).
        if (sp.bytes && !device_range(sp.p, sp.bytes, &problem) && !pinned_range(sp.p, sp.bytes)) {
            std::fprintf(stderr, "cudaemu: %s: matrix %s: %s\n", api, sp.name, problem.c_str());
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    Op op;
    op.body = [g] { g.run(); };
    enqueue(*s, std::move(op));
    return CUBLAS_STATUS_SUCCESS;
}

double scalar(const void* p, cublasComputeType_t t) {
    return t == CUBLAS_COMPUTE_64F ? *static_cast<const double*>(p)
           : t == CUBLAS_COMPUTE_16F ? double(float(*static_cast<const __half*>(p)))
                                     : double(*static_cast<const float*>(p));
}

}  // namespace

}  // namespace cudaemu::detail

using namespace cudaemu::detail;

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t) {
    return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char* cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t status) { return cublasGetStatusName(status); }

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc) {
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    return submit(handle, "cublasSgemm",
                  {transa, transb, m, n, k, *alpha, *beta, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, C, CUDA_R_32F,
                   ldc, 0, 1});
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long stride_a, const float* B, int ldb, long long stride_b,
                                         const float* beta, float* C, int ldc, long long stride_c, int batch_count) {
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    return submit(handle, "cublasSgemmStridedBatched",
                  {transa, transb, m, n, k, *alpha, *beta, A, CUDA_R_32F, lda, stride_a, B, CUDA_R_32F, ldb, stride_b, C,
                   CUDA_R_32F, ldc, stride_c, batch_count});
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType a_type, int lda, const void* B,
                            cudaDataType b_type, int ldb, const void* beta, void* C, cudaDataType c_type, int ldc,
                            cublasComputeType_t compute_type, cublasGemmAlgo_t) {
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    return submit(handle, "cublasGemmEx",
                  {transa, transb, m, n, k, scalar(alpha, compute_type), scalar(beta, compute_type), A, a_type, lda, 0, B,
                   b_type, ldb, 0, C, c_type, ldc, 0, 1});
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType a_type,
                                          int lda, long long stride_a, const void* B, cudaDataType b_type, int ldb,
                                          long long stride_b, const void* beta, void* C, cudaDataType c_type, int ldc,
                                          long long stride_c, int batch_count, cublasComputeType_t compute_type,
                                          cublasGemmAlgo_t) {
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    return submit(handle, "cublasGemmStridedBatchedEx",
                  {transa, transb, m, n, k, scalar(alpha, compute_type), scalar(beta, compute_type), A, a_type, lda,
                   stride_a, B, b_type, ldb, stride_b, C, c_type, ldc, stride_c, batch_count});
}

}  // extern "C"
