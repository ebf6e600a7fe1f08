// Fused quantised GEMV/GEMM against our (gguf-py-exact) dequantiser followed by a double dot of
// the unquantised activations. The fused path quantises activations to int8 per 32, so the bound
// is relative to sum |w||x|: 1e-2 of it, far above int8 rounding (~0.4%/sqrt(n) typical) yet far
// below any indexing or scale error (which is O(1) of it).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/quant_dot.hpp"

using namespace sluice;

namespace {

std::vector<uint8_t> random_blocks(DType type, int64_t rows, int64_t cols, std::mt19937& rng) {
    const auto& tr = block_type(type);
    const int64_t n_blocks = rows * cols / tr.block_elems;
    std::vector<uint8_t> bytes(size_t(n_blocks * tr.block_bytes));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    for (auto& v : bytes) v = uint8_t(byte(rng));
    for (int64_t b = 0; b < n_blocks; ++b) {  // the f16 scale sits at offset 0 in Q8_0 / Q4_0 / Q4_K / Q5_K
        const uint16_t d = f32_to_f16(rng() % 2 ? scale(rng) : -scale(rng));
        // Q6_K keeps its f16 scale last (offset 208); the others first
        std::memcpy(bytes.data() + b * tr.block_bytes + (type == DType::Q6_K ? 208 : 0), &d, 2);
        if (type == DType::Q4_K || type == DType::Q5_K) {  // and their dmin follows it
            const uint16_t dmin = f32_to_f16(scale(rng));
            std::memcpy(bytes.data() + b * tr.block_bytes + 2, &dmin, 2);
        }
    }
    return bytes;
}

}  // namespace

TEST_CASE("fused quantised gemm matches dequantise-then-dot within the activation-quantisation bound") {
    ThreadPool pool(2);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const cpu::QuantDotPath paths[] = {cpu::QuantDotPath::scalar, cpu::QuantDotPath::avx2,
                                       cpu::QuantDotPath::avx512_vnni};
    for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
        const int64_t unit = block_type(type).block_elems;
        for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{1, unit}, {37, 3 * unit}, {129, 17 * unit}}) {
            const auto w_bytes = random_blocks(type, rows, cols, rng);
            Matrix w;
            w.type = type;
            w.rows = rows;
            w.cols = cols;
            w.data = w_bytes.data();
            std::vector<float> w_f32(size_t(rows * cols));
            block_type(type).dequantize_row(w_bytes.data(), w_f32.data(), rows * cols);
            for (int64_t n_tokens = 1; n_tokens <= 9; ++n_tokens) {
                const int64_t x_stride = cols + 3, y_stride = rows + 1;
                std::vector<float> x(size_t(x_stride * n_tokens));
                for (auto& v : x) v = normal(rng);
                for (auto path : paths) {
                    if (!cpu::quant_dot_path_available(path)) {
                        MESSAGE("path not available here: ", int(path));
                        continue;
                    }
                    CAPTURE(dtype_name(type));
                    CAPTURE(int(path));
                    CAPTURE(rows);
                    CAPTURE(n_tokens);
                    std::vector<float> y(size_t(y_stride * n_tokens), -12345.0f);
                    cpu::quant_gemm_on_path(path, w, x.data(), x_stride, n_tokens, y.data(),
                                            y_stride, pool);
                    for (int64_t t = 0; t < n_tokens; ++t) {
                        for (int64_t r = 0; r < rows; ++r) {
                            double ref = 0, mag = 0;
                            for (int64_t c = 0; c < cols; ++c) {
                                const double wv = w_f32[size_t(r * cols + c)];
                                const double xv = x[size_t(t * x_stride + c)];
                                ref += wv * xv;
                                mag += std::fabs(wv * xv);
                            }
                            const double err = std::fabs(double(y[size_t(t * y_stride + r)]) - ref);
                            REQUIRE(err <= 1e-2 * mag + 1e-6);
                        }
                        // the padding between token rows of y is left alone
                        CHECK(y[size_t(t * y_stride + rows)] == -12345.0f);
                    }
                }
            }
        }
    }
}

TEST_CASE("fused gemm refuses types and shapes it has no kernel for") {
    ThreadPool pool(1);
    std::vector<uint8_t> bytes(110 * 2);
    float x[256] = {}, y[2] = {};
    Matrix w;
    w.type = DType::Q3_K;
    w.rows = 1;
    w.cols = 256;
    w.data = bytes.data();
    CHECK_FALSE(cpu::quant_dot_supports(DType::Q3_K));
    CHECK_THROWS_AS(cpu::quant_gemm(w, x, 256, 1, y, 1, pool), Error);
}
