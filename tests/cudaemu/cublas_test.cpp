// The emulator's cuBLAS GEMMs against a plain loop on the host, for every transpose pair,
// BF16 / F16 inputs, strided batches, beta, and argument and bounds checks.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <random>

#include "emu_test.hpp"

using namespace emu_test;

namespace {

// Column-major reference: C = alpha op(A) op(B) + beta C.
std::vector<double> reference(bool ta, bool tb, int m, int n, int k, double alpha, const std::vector<float>& a, int lda,
                              const std::vector<float>& b, int ldb, double beta, const std::vector<float>& c, int ldc) {
    std::vector<double> out(c.begin(), c.end());
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            double acc = 0;
            for (int p = 0; p < k; ++p)
                acc += double(ta ? a[size_t(i) * lda + p] : a[size_t(p) * lda + i]) *
                       double(tb ? b[size_t(p) * ldb + j] : b[size_t(j) * ldb + p]);
            out[size_t(j) * ldc + i] = alpha * acc + beta * c[size_t(j) * ldc + i];
        }
    return out;
}

std::vector<float> randoms(std::mt19937& rng, size_t n) {
    std::uniform_real_distribution<float> d(-1, 1);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

}  // namespace

TEST_CASE("cublasSgemm equals the host loop for every transpose pair, with alpha and beta") {
    std::mt19937 rng(1);
    cublasHandle_t h;
    REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    const int m = 13, n = 7, k = 29;
    for (bool ta : {false, true})
        for (bool tb : {false, true}) {
            CAPTURE(ta);
            CAPTURE(tb);
            const int lda = (ta ? k : m) + 2, ldb = (tb ? n : k) + 1, ldc = m + 3;
            const auto a = randoms(rng, size_t(lda) * (ta ? m : k));
            const auto b = randoms(rng, size_t(ldb) * (tb ? k : n));
            const auto c = randoms(rng, size_t(ldc) * n);
            auto *da = upload(a), *db = upload(b), *dc = upload(c);
            const float alpha = 0.75f, beta = -0.5f;
            REQUIRE(cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, da,
                                lda, db, ldb, &beta, dc, ldc) == CUBLAS_STATUS_SUCCESS);
            const auto got = download(dc, c.size());
            const auto want = reference(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            for (int j = 0; j < n; ++j)
                for (int i = 0; i < m; ++i)
                    CHECK(got[size_t(j) * ldc + i] == doctest::Approx(want[size_t(j) * ldc + i]).epsilon(1e-6));
            cudaFree(da);
            cudaFree(db);
            cudaFree(dc);
        }
    cublasDestroy(h);
}

TEST_CASE("cublasGemmEx on BF16 inputs and cublasSgemmStridedBatched on a stream") {
    std::mt19937 rng(2);
    cublasHandle_t h;
    REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cublasSetStream(h, s) == CUBLAS_STATUS_SUCCESS);
    const int m = 9, n = 5, k = 16, batch = 3;
    const auto a = randoms(rng, size_t(k) * m), b = randoms(rng, size_t(k) * n);
    std::vector<__nv_bfloat16> a16(a.begin(), a.end()), b16(b.begin(), b.end());
    std::vector<float> a_rounded(a16.begin(), a16.end()), b_rounded(b16.begin(), b16.end());
    auto *da = upload(a16), *db = upload(b16);
    auto* dc = device_array<float>(size_t(m) * n);
    const float one = 1, zero = 0;
    REQUIRE(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, da, CUDA_R_16BF, k, db, CUDA_R_16BF, k, &zero, dc,
                         CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    auto got = download(dc, size_t(m) * n);
    // beta = 0: C's poison (NaN) is never read.
    const auto want = reference(true, false, m, n, k, 1, a_rounded, k, b_rounded, k, 0, std::vector<float>(size_t(m) * n), m);
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-6));

    const auto ab = randoms(rng, size_t(m) * k * batch), bb = randoms(rng, size_t(k) * n * batch);
    auto *dab = upload(ab), *dbb = upload(bb);
    auto* dcb = device_array<float>(size_t(m) * n * batch);
    REQUIRE(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dab, m, m * k, dbb, k, k * n, &zero, dcb,
                                      m, m * n, batch) == CUBLAS_STATUS_SUCCESS);
    got = download(dcb, size_t(m) * n * batch);
    for (int q = 0; q < batch; ++q) {
        const std::vector<float> aq(ab.begin() + q * m * k, ab.begin() + (q + 1) * m * k);
        const std::vector<float> bq(bb.begin() + q * k * n, bb.begin() + (q + 1) * k * n);
        const auto wq = reference(false, false, m, n, k, 1, aq, m, bq, k, 0, std::vector<float>(size_t(m) * n), m);
        for (int i = 0; i < m * n; ++i) CHECK(got[size_t(q * m * n + i)] == doctest::Approx(wq[size_t(i)]).epsilon(1e-6));
    }
    for (void* p : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dc), static_cast<void*>(dab),
                    static_cast<void*>(dbb), static_cast<void*>(dcb)})
        cudaFree(p);
    cudaStreamDestroy(s);
    cublasDestroy(h);
}

TEST_CASE("cuBLAS refuses bad leading dimensions and matrices that leave their allocation") {
    cublasHandle_t h;
    REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    auto* a = device_array<float>(64);
    auto* c = device_array<float>(64);
    const float one = 1, zero = 0;
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, a, 7, a, 8, &zero, c, 8) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 9, &one, a, 8, a, 9, &zero, c, 8) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, a, 8, a, 8, &zero, c, 8) == CUBLAS_STATUS_SUCCESS);
    CHECK(device_error().empty());
    cudaFree(a);
    cudaFree(c);
    cublasDestroy(h);
}
