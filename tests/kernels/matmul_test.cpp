#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/gemm_bf16_tiles.hpp"
#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/matmul_transposed.hpp"

using namespace sluice;
using namespace sluice::cpu;

namespace {

// Stored bytes of a [rows, cols] matrix of `type` built from f32 values.
std::vector<uint8_t> encode(DType type, const std::vector<float>& values) {
    std::vector<uint8_t> bytes;
    if (type == DType::F32) {
        bytes.resize(values.size() * 4);
        std::memcpy(bytes.data(), values.data(), bytes.size());
        return bytes;
    }
    bytes.resize(values.size() * 2);
    for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = type == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
    return bytes;
}

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

// The reference: every row dequantised by the table's scalar dequantiser (FP8: times its block
// scale), dotted in double. Also returns sum |w x| per output, which bounds fp32 rounding.
void reference_gemm(const Matrix& w, const std::vector<float>& x, int64_t n_tokens, std::vector<double>& y,
                    std::vector<double>& magnitude) {
    std::vector<float> row(static_cast<size_t>(w.cols));
    y.assign(size_t(n_tokens * w.rows), 0.0);
    magnitude.assign(y.size(), 0.0);
    for (int64_t r = 0; r < w.rows; ++r) {
        block_type(w.type).dequantize_row(w.row(r), row.data(), w.cols);
        if (w.type == DType::FP8_E4M3_B128)
            for (int64_t c = 0; c < w.cols; ++c) row[size_t(c)] *= w.block_scale(r, c);
        for (int64_t t = 0; t < n_tokens; ++t) {
            double sum = 0, mag = 0;
            for (int64_t c = 0; c < w.cols; ++c) {
                const double p = double(row[size_t(c)]) * x[size_t(t * w.cols + c)];
                sum += p;
                mag += std::abs(p);
            }
            y[size_t(t * w.rows + r)] = sum;
            magnitude[size_t(t * w.rows + r)] = mag;
        }
    }
}

// fp32 accumulation of n products: error well under 2e-5 of sum |w x| at these lengths.
constexpr double kRelativeTolerance = 2e-5;

void check_gemm_on_every_path(const Matrix& w, int64_t n_tokens, ThreadPool& pool, bool via_dequantize = false) {
    std::mt19937 rng(uint32_t(w.rows * 131 + w.cols * 7 + n_tokens));
    const std::vector<float> x = random_floats(rng, size_t(n_tokens * w.cols));
    std::vector<double> ref, magnitude;
    reference_gemm(w, x, n_tokens, ref, magnitude);
    for (CpuPath path : detail::supported_paths()) {
        const std::string path_label = detail::path_name(path);
        CAPTURE(path_label);
        // Outputs land in a wider buffer (y_stride > rows) to check the stride is honoured.
        const int64_t y_stride = w.rows + 3;
        std::vector<float> y(size_t(n_tokens * y_stride), -7.0f);
        if (via_dequantize) {
            std::vector<float> scratch(static_cast<size_t>(w.cols));
            detail::path_kernels(path).gemm_dequantized(w, 0, w.rows, x.data(), w.cols, n_tokens, y.data(),
                                                        y_stride, scratch.data());
        } else {
            // Activations too sit in wider rows (x_stride > cols), as a head's slice of q does.
            const int64_t x_stride = w.cols + 5;
            std::vector<float> x_wide(static_cast<size_t>(n_tokens * x_stride), NAN);
            for (int64_t t = 0; t < n_tokens; ++t)
                std::copy(x.begin() + t * w.cols, x.begin() + (t + 1) * w.cols, x_wide.begin() + t * x_stride);
            detail::gemm_on_path(path, w, x_wide.data(), x_stride, n_tokens, y.data(), y_stride, pool);
        }
        int bad = 0;
        for (int64_t t = 0; t < n_tokens; ++t) {
            for (int64_t r = 0; r < w.rows; ++r) {
                const double want = ref[size_t(t * w.rows + r)];
                const double tol = kRelativeTolerance * magnitude[size_t(t * w.rows + r)] + 1e-6;
                if (std::abs(y[size_t(t * y_stride + r)] - want) > tol) ++bad;
            }
            for (int64_t r = w.rows; r < y_stride; ++r) CHECK(y[size_t(t * y_stride + r)] == -7.0f);
        }
        CHECK(bad == 0);
    }
}

}  // namespace

TEST_CASE("gemm equals a double-precision reference for F32, F16 and BF16 weights on every path") {
    for (CpuPath path : detail::supported_paths()) MESSAGE("kernel path exercised: " << std::string(detail::path_name(path)));
    ThreadPool pool(3);
    std::mt19937 rng(1);
    const int64_t shapes[][2] = {{1, 1}, {37, 203}, {64, 256}, {19, 1000}, {5, 17}, {130, 2051}};
    for (DType type : {DType::F32, DType::F16, DType::BF16}) {
        for (const auto& shape : shapes) {
            const std::vector<float> values = random_floats(rng, size_t(shape[0] * shape[1]));
            const std::vector<uint8_t> bytes = encode(type, values);
            const Matrix w{type, shape[0], shape[1], bytes.data()};
            for (int64_t n_tokens : {1, 3, 4, 9}) {
                CAPTURE(dtype_name(type));
                CAPTURE(shape[0]);
                CAPTURE(shape[1]);
                CAPTURE(n_tokens);
                check_gemm_on_every_path(w, n_tokens, pool);
            }
        }
    }
}

TEST_CASE("gemv with one thread and with several threads writes every row") {
    std::mt19937 rng(2);
    const std::vector<float> values = random_floats(rng, 333 * 77);
    const std::vector<uint8_t> bytes = encode(DType::BF16, values);
    const Matrix w{DType::BF16, 333, 77, bytes.data()};
    const std::vector<float> x = random_floats(rng, 77);
    std::vector<float> y1(333, NAN), y4(333, NAN);
    ThreadPool one(1), four(4);
    gemv(w, x.data(), y1.data(), one);
    gemv(w, x.data(), y4.data(), four);
    for (int r = 0; r < 333; ++r) {
        REQUIRE(std::isfinite(y1[size_t(r)]));
        CHECK(y1[size_t(r)] == y4[size_t(r)]);  // same rows, same order of sums: bit-identical
    }
}

TEST_CASE("the generic dequantising path equals the reference for F32, F16, BF16 and FP8") {
    ThreadPool pool(2);
    std::mt19937 rng(3);
    for (DType type : {DType::F16, DType::BF16, DType::F32}) {
        const std::vector<float> values = random_floats(rng, size_t(41 * 300));
        const std::vector<uint8_t> bytes = encode(type, values);
        const Matrix w{type, 41, 300, bytes.data()};
        CAPTURE(dtype_name(type));
        check_gemm_on_every_path(w, 6, pool, /*via_dequantize=*/true);
    }
    std::vector<uint8_t> fp8(41 * 300);
    for (size_t i = 0; i < fp8.size(); ++i) fp8[i] = uint8_t((i * 37 + 11) % 256 == 0x7f ? 0 : (i * 37 + 11) % 256);
    const std::vector<float> scales = random_floats(rng, 3, 0.1f, 3.0f);
    const Matrix w{DType::FP8_E4M3_B128, 41, 300, fp8.data(), scales.data(), 0};
    check_gemm_on_every_path(w, 6, pool, /*via_dequantize=*/true);
}

TEST_CASE("FP8 block-128 weights apply one scale per 128x128 block, also in a row slice") {
    ThreadPool pool(3);
    std::mt19937 rng(4);
    const int64_t rows = 300, cols = 333;  // 3 x 3 scale grid with ragged last blocks
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<uint8_t> fp8(size_t(rows * cols));
    for (auto& b : fp8) {
        do b = uint8_t(byte(rng));
        while ((b & 0x7f) == 0x7f);  // 0x7f / 0xff are NaN in e4m3fn
    }
    const std::vector<float> scales = random_floats(rng, 9, 0.01f, 2.0f);
    const Matrix w{DType::FP8_E4M3_B128, rows, cols, fp8.data(), scales.data(), 0};
    for (int64_t n_tokens : {1, 5}) check_gemm_on_every_path(w, n_tokens, pool);
    // Rows 100..229 straddle the first and second scale rows.
    check_gemm_on_every_path(w.row_slice(100, 130), 3, pool);
    CHECK(has_matmul_kernel(DType::FP8_E4M3_B128));

    const Matrix unscaled{DType::FP8_E4M3_B128, rows, cols, fp8.data()};
    std::vector<float> x(static_cast<size_t>(cols)), y(static_cast<size_t>(rows));
    CHECK_THROWS_AS(gemv(unscaled, x.data(), y.data(), pool), Error);
}

TEST_CASE("every type with a dequantiser has a matmul kernel that matches its dequantised rows") {
    ThreadPool pool(2);
    std::mt19937 rng(5);
    // Bytes below 0x3c keep every embedded f16/bf16/f32 scale finite and every fp8 byte non-NaN.
    std::uniform_int_distribution<int> byte(0, 0x3b);
    int n_types = 0;
    for (uint32_t id = 0; id < 2000; ++id) {
        const BlockTypeTraits* traits = find_block_type(id);
        if (!traits || !traits->dequantize_row) {
            if (traits) CHECK_FALSE(has_matmul_kernel(traits->type));
            continue;
        }
        CAPTURE(traits->name);
        const int64_t rows = 21, cols = 2 * 256 * traits->block_elems / std::gcd(256, traits->block_elems);
        std::vector<uint8_t> bytes(size_t(rows * row_bytes(traits->type, cols)));
        for (auto& b : bytes) b = uint8_t(byte(rng));
        const std::vector<float> scales = random_floats(rng, 64, 0.5f, 1.5f);
        const Matrix w{traits->type, rows, cols, bytes.data(), scales.data(), 0};
        CHECK(has_matmul_kernel(traits->type));
        check_gemm_on_every_path(w, 5, pool);
        ++n_types;
    }
    CHECK(n_types >= 4);  // at least F32, F16, BF16, FP8
}

// MLA's absorb step applies kv_b from the other side: Y[t] = W^T X[t]. Every type with a
// dequantiser, odd shapes, strided inputs and outputs, token counts on both sides of the kernels'
// groups of 8; against the dequantised rows summed in double. Output columns past W.cols are untouched.
TEST_CASE("the transposed product equals a double reference for every weight type and token count") {
    std::mt19937 rng(17);
    std::uniform_int_distribution<int> byte(0, 0x3b);
    int n_types = 0;
    for (uint32_t id = 0; id < 2000; ++id) {
        const BlockTypeTraits* traits = find_block_type(id);
        if (!traits || !traits->dequantize_row) continue;
        CAPTURE(traits->name);
        const int64_t rows = 13, cols = traits->block_elems == 1 ? 37 : 2 * traits->block_elems;
        std::vector<uint8_t> bytes(size_t(rows * row_bytes(traits->type, cols)));
        for (auto& b : bytes) b = uint8_t(byte(rng));
        const std::vector<float> scales = random_floats(rng, 64, 0.5f, 1.5f);
        const Matrix w{traits->type, rows, cols, bytes.data(), scales.data(), 0};
        std::vector<float> dequantized(size_t(rows * cols));
        for (int64_t r = 0; r < rows; ++r) {
            traits->dequantize_row(w.row(r), dequantized.data() + r * cols, cols);
            if (w.block_scales)
                for (int64_t c = 0; c < cols; ++c) dequantized[size_t(r * cols + c)] *= w.block_scale(r, c);
        }
        std::vector<float> scratch(size_t(gemm_transposed_scratch_floats(rows, cols)));
        for (int64_t n_tokens : {1, 3, 8, 11, 19}) {
            CAPTURE(n_tokens);
            const int64_t x_stride = rows + 3, y_stride = cols + 5;
            const std::vector<float> x = random_floats(rng, size_t(n_tokens * x_stride));
            std::vector<float> y(size_t(n_tokens * y_stride), 1234.5f);
            gemm_transposed(w, x.data(), x_stride, n_tokens, y.data(), y_stride, scratch.data());
            int bad = 0;
            for (int64_t t = 0; t < n_tokens; ++t) {
                for (int64_t c = 0; c < cols; ++c) {
                    double want = 0, magnitude = 0;
                    for (int64_t r = 0; r < rows; ++r) {
                        const double p = double(dequantized[size_t(r * cols + c)]) * x[size_t(t * x_stride + r)];
                        want += p;
                        magnitude += std::abs(p);
                    }
                    if (!(std::abs(y[size_t(t * y_stride + c)] - want) <= kRelativeTolerance * magnitude + 1e-30)) ++bad;
                }
                for (int64_t c = cols; c < y_stride; ++c) bad += y[size_t(t * y_stride + c)] != 1234.5f;
            }
            CHECK(bad == 0);
        }
        ++n_types;
    }
    CHECK(n_types >= 8);
}

// f32 weights without block scales are used in place (MLA's absorb through W_UK turned round):
// the same sums as the dequantising path gives the same weights, and no scratch is touched.
TEST_CASE("the transposed product of f32 weights uses them in place, with the dequantising path's bits") {
    std::mt19937 rng(29);
    const int64_t rows = 128, cols = 96, n_tokens = 11, x_stride = rows + 64;
    const std::vector<float> weights = random_floats(rng, size_t(rows * cols));
    const std::vector<float> x = random_floats(rng, size_t(n_tokens * x_stride));
    std::vector<float> y(size_t(n_tokens * cols)), want(size_t(n_tokens * cols));
    // as F16 holding the same values would go: dequantised into scratch, then the same kernel
    std::vector<uint16_t> halves(weights.size());
    std::vector<float> rounded(weights.size());
    for (size_t i = 0; i < weights.size(); ++i) rounded[i] = f16_to_f32(halves[i] = f32_to_f16(weights[i]));
    const Matrix as_f32{DType::F32, rows, cols, rounded.data(), nullptr, 0}, as_f16{DType::F16, rows, cols, halves.data(), nullptr, 0};
    std::vector<float> scratch(size_t(gemm_transposed_scratch_floats(rows, cols)));
    gemm_transposed(as_f32, x.data(), x_stride, n_tokens, y.data(), cols, nullptr);
    gemm_transposed(as_f16, x.data(), x_stride, n_tokens, want.data(), cols, scratch.data());
    CHECK(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) == 0);
}

// Turning weights round is exact (each element is dequantised the one way): the AVX-512 Q8_0 path
// (16 rows per gather pass) and the generic loop (the other types, and the rows past the last 16)
// both give out[c][r] = dequantised W[r][c] bit for bit. 37 rows: two gather passes and 5 left.
TEST_CASE("weights turned round to f32 equal their dequantised rows exactly") {
    std::mt19937 rng(31);
    std::uniform_int_distribution<int> byte(0, 255);
    for (DType type : {DType::Q8_0, DType::Q4_K, DType::Q6_K}) {
        CAPTURE(dtype_name(type));
        const auto& traits = block_type(type);
        const int64_t rows = 37, cols = 256;
        std::vector<uint8_t> bytes(size_t(rows * row_bytes(type, cols)));
        for (auto& b : bytes) b = uint8_t(byte(rng));
        const Matrix w{type, rows, cols, bytes.data(), nullptr, 0};
        for (int64_t r = 0; r < rows; ++r) {  // finite f16 scales (random bits may be inf / NaN)
            for (int64_t b = 0; b < cols / traits.block_elems; ++b) {
                auto* block = bytes.data() + r * w.bytes_per_row() + b * traits.block_bytes;
                const uint16_t d = f32_to_f16(0.01f * float(1 + byte(rng))), dmin = f32_to_f16(0.003f * float(byte(rng)));
                const size_t at = type == DType::Q6_K ? size_t(traits.block_bytes - 2) : 0;
                std::memcpy(block + at, &d, 2);
                if (type == DType::Q4_K) std::memcpy(block + 2, &dmin, 2);
            }
        }
        std::vector<float> rows_f32(size_t(rows * cols)), turned(size_t(rows * cols), -1.0f);
        for (int64_t r = 0; r < rows; ++r) traits.dequantize_row(w.row(r), rows_f32.data() + r * cols, cols);
        std::vector<float> scratch(size_t(transpose_scratch_floats(cols)));
        transpose_to_f32(w, turned.data(), scratch.data());
        int bad = 0;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c)
                bad += std::memcmp(&turned[size_t(c * rows + r)], &rows_f32[size_t(r * cols + c)], sizeof(float)) != 0;
        CHECK(bad == 0);
    }
}

TEST_CASE("bf16 tiles of a turned-round Q8_0 matrix: within f32 summation of the bf16-rounded product, grouped "
          "outputs in place, a token's bits the same alone or beside others") {
    // w is k_b-like ([M.cols, M.rows] as stored); M = w^T is [64, 96] in groups of 32 rows, whose
    // outputs sit 40 floats apart in rows of 83 (the gaps and the row's tail must stay untouched).
    const int64_t m_rows = 64, m_cols = 96, group = 32, y_offset = 40, y_stride = 83;
    if (!bf16_tiles_supported(m_rows, m_cols)) {
        MESSAGE("this CPU has no AVX-512 BF16 (or SLUICE_CPU caps the path): bf16 tiles not tested");
        return;
    }
    std::mt19937 rng(77);
    std::uniform_int_distribution<int> byte(0, 255);
    const auto& q8 = block_type(DType::Q8_0);
    std::vector<uint8_t> bytes(size_t(m_cols * row_bytes(DType::Q8_0, m_rows)));
    for (auto& b : bytes) b = uint8_t(byte(rng));
    for (size_t at = 0; at < bytes.size(); at += size_t(q8.block_bytes)) {  // finite f16 scales
        const uint16_t d = f32_to_f16(0.01f * float(1 + byte(rng)));
        std::memcpy(bytes.data() + at, &d, 2);
    }
    const Matrix w{DType::Q8_0, m_cols, m_rows, bytes.data(), nullptr, 0};
    std::vector<uint32_t> tiles(size_t(bf16_tile_words(m_rows, m_cols)));
    std::vector<float> scratch(size_t(2 * w.cols));
    pack_bf16_tiles_transposed(w, tiles.data(), scratch.data());

    std::vector<float> m(size_t(m_rows * m_cols)), row(size_t(w.cols));  // M[r][c], rounded as the tiles are
    for (int64_t c = 0; c < m_cols; ++c) {
        q8.dequantize_row(w.row(c), row.data(), w.cols);
        for (int64_t r = 0; r < m_rows; ++r) m[size_t(r * m_cols + c)] = bf16_to_f32(f32_to_bf16(row[size_t(r)]));
    }
    ThreadPool pool(2);
    for (const int64_t n_tokens : {1, 16, 19}) {  // one call of 16, a remainder, one token
        CAPTURE(n_tokens);
        const int64_t x_stride = m_cols + 5;
        const auto x = random_floats(rng, size_t(n_tokens * x_stride));
        std::vector<float> y(size_t(n_tokens * y_stride), -7.0f);
        std::vector<uint32_t> x_words(size_t(bf16_tiles_activation_words(n_tokens, m_cols)));
        gemm_bf16_tiles(tiles.data(), m_rows, m_cols, {group, 0, y_offset}, x.data(), x_stride, n_tokens, y.data(),
                        y_stride, x_words.data(), pool);
        int bad = 0, untouched = 0, gaps = 0;
        for (int64_t t = 0; t < n_tokens; ++t) {
            for (int64_t r = 0; r < m_rows; ++r) {
                double want = 0, mag = 0;
                for (int64_t c = 0; c < m_cols; ++c) {
                    const double p = double(m[size_t(r * m_cols + c)]) * bf16_to_f32(f32_to_bf16(x[size_t(t * x_stride + c)]));
                    want += p;
                    mag += std::abs(p);
                }
                const int64_t at = t * y_stride + r / group * y_offset + r % group;
                bad += std::abs(y[size_t(at)] - want) > 1e-5 * mag + 1e-7;  // f32 sums of exact products
            }
            for (int64_t i = 0; i < y_stride; ++i) {
                const bool output = i < 2 * y_offset && i % y_offset < group;
                gaps += !output;
                untouched += !output && y[size_t(t * y_stride + i)] == -7.0f;
            }
            // The same token alone: the same bits.
            std::vector<float> alone(size_t(y_stride), -7.0f);
            gemm_bf16_tiles(tiles.data(), m_rows, m_cols, {group, 0, y_offset}, x.data() + t * x_stride, x_stride, 1,
                            alone.data(), y_stride, x_words.data(), pool);
            CHECK(std::memcmp(alone.data(), y.data() + t * y_stride, size_t(y_stride) * 4) == 0);
        }
        CHECK(bad == 0);
        CHECK(untouched == gaps);
    }
}
