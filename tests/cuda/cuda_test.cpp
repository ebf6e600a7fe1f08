// The CUDA kernels against the CPU backend on random inputs: weights of every stored type
// dequantised by the CPU's dequantisers (bit-identical to gguf-py, tests/kernels/
// quant_dequant_test.cpp) and dotted in double, and the CPU's own gemv. Needs a device: without
// one the binary prints why and exits 77, which meson reports as SKIP (never a silent pass).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <random>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/quant_dot.hpp"
#include "kernels/cpu/quantize_activations.hpp"
#include "kernels/cuda/attention.hpp"
#include "kernels/cuda/device.hpp"
#include "kernels/cuda/device_memory.hpp"
#include "kernels/cuda/gemm.hpp"
#include "kernels/cuda/gemv.hpp"
#include "kernels/cuda/ops.hpp"
#include "kernels/cuda/streams.hpp"
#include "kernels/dequantize.hpp"

using namespace sluice;

namespace {

template <typename T>
cuda::DeviceBuffer upload(const std::vector<T>& v) {
    cuda::DeviceBuffer b(v.size() * sizeof(T));
    SLUICE_CUDA_CHECK(cudaMemcpy(b.data(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return b;
}

template <typename T>
std::vector<T> download(const cuda::DeviceBuffer& b, size_t n) {
    std::vector<T> v(n);
    SLUICE_CUDA_CHECK(cudaDeviceSynchronize());
    SLUICE_CUDA_CHECK(cudaMemcpy(v.data(), b.data(), n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
}

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

// Where each block type keeps its f16 scales (d, and dmin / m for the affine types; -1: none):
// random bytes there would give inf / NaN, every other byte stays random.
struct ScaleFields {
    int d, dmin;
};
ScaleFields scale_fields(DType type) {
    switch (type) {
        case DType::Q4_1: case DType::Q5_1: case DType::Q4_K: case DType::Q5_K: return {0, 2};
        case DType::Q2_K: return {80, 82};
        case DType::Q3_K: return {108, -1};
        case DType::Q6_K: return {208, -1};
        default: return {0, -1};  // Q4_0, Q5_0, Q8_0, IQ4_NL, IQ4_XS
    }
}

// Every block-quantised type the CPU reads: the device must read them all.
constexpr DType kQuantTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K,
                                 DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_NL, DType::IQ4_XS};

// A random stored matrix of `type` and its dequantised values (FP8: scales applied).
struct HostMatrix {
    DType type;
    int64_t rows, cols;
    std::vector<uint8_t> bytes;
    std::vector<float> scales;  // FP8 grid
    std::vector<float> dense;   // [rows, cols]
};

HostMatrix random_matrix(std::mt19937& rng, DType type, int64_t rows, int64_t cols) {
    HostMatrix m{type, rows, cols, {}, {}, std::vector<float>(size_t(rows * cols))};
    const int64_t rb = row_bytes(type, cols);
    m.bytes.resize(size_t(rb * rows));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f), small(0.001f, 0.02f);
    for (auto& b : m.bytes) b = uint8_t(byte(rng));
    for (int64_t r = 0; r < rows; ++r) {
        uint8_t* row = m.bytes.data() + r * rb;
        float* out = m.dense.data() + r * cols;
        switch (type) {
            case DType::F32:
                for (int64_t c = 0; c < cols; ++c) {
                    const float v = unit(rng);
                    std::memcpy(row + 4 * c, &v, 4);
                    out[c] = v;
                }
                break;
            case DType::F16:
            case DType::BF16:
                for (int64_t c = 0; c < cols; ++c) {
                    const uint16_t h = type == DType::F16 ? f32_to_f16(unit(rng)) : f32_to_bf16(unit(rng));
                    std::memcpy(row + 2 * c, &h, 2);
                    out[c] = type == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
                }
                break;
            case DType::FP8_E4M3_B128:
                for (int64_t c = 0; c < cols; ++c) {
                    if ((row[c] & 0x7f) == 0x7f) row[c] ^= 1;  // no NaN codes
                    out[c] = fp8_e4m3_to_f32(row[c]);
                }
                break;
            default: {
                // Random quants and sub-scales, modest f16 scales of either sign (mins positive).
                const auto& traits = block_type(type);
                const ScaleFields f = scale_fields(type);
                for (int64_t b = 0; b < cols / traits.block_elems; ++b) {
                    uint8_t* block = row + b * traits.block_bytes;
                    const uint16_t d = f32_to_f16(byte(rng) % 2 ? small(rng) : -small(rng));
                    std::memcpy(block + f.d, &d, 2);
                    if (f.dmin >= 0) {
                        const uint16_t dmin = f32_to_f16(small(rng));
                        std::memcpy(block + f.dmin, &dmin, 2);
                    }
                }
                traits.dequantize_row(row, out, cols);
                break;
            }
        }
    }
    if (type == DType::FP8_E4M3_B128) {
        const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        m.scales = random_floats(rng, size_t(sr * sc), 0.5f, 2.0f);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) m.dense[size_t(r * cols + c)] *= m.scales[size_t((r / 128) * sc + c / 128)];
    }
    return m;
}

// |y - ref| <= tol * sum |w x| + 1e-6 for every output: the error relative to the magnitudes summed.
// ref is the double dot of the dequantised rows, or `want` (another backend's outputs) when given.
void check_products(const HostMatrix& m, const std::vector<float>& x, int64_t x_stride, int64_t n_tokens,
                    const std::vector<float>& y, int64_t y_stride, double tol, int64_t row_begin = 0, int64_t n_rows = -1,
                    const std::vector<float>* want = nullptr) {
    if (n_rows < 0) n_rows = m.rows;
    int bad = 0;
    for (int64_t t = 0; t < n_tokens; ++t)
        for (int64_t r = 0; r < n_rows; ++r) {
            double ref = 0, mag = 0;
            for (int64_t c = 0; c < m.cols; ++c) {
                const double p = double(m.dense[size_t((row_begin + r) * m.cols + c)]) * x[size_t(t * x_stride + c)];
                ref += p;
                mag += std::fabs(p);
            }
            if (want) ref = (*want)[size_t(t * y_stride + r)];
            const double got = y[size_t(t * y_stride + r)];
            if (!(std::fabs(got - ref) <= tol * mag + 1e-6) && bad++ < 5)
                MESSAGE("token " << t << " row " << r << ": got " << got << " want " << ref << " (sum|wx| " << mag << ")");
        }
    CHECK(bad == 0);
}

struct TypeCase {
    DType type;
    int64_t rows, cols;
};

// Both backends take the quantised-weight path from cpu::quant_dot(): a test sets the mode it
// checks and puts the old one back.
class QuantDotMode {
public:
    explicit QuantDotMode(cpu::QuantDot mode) : old_(cpu::quant_dot()) { cpu::set_quant_dot(mode); }
    ~QuantDotMode() { cpu::set_quant_dot(old_); }

private:
    cpu::QuantDot old_;
};

}  // namespace

namespace {

// Per block type: a few rows of three 256-column units, and rows of an odd number of blocks (the
// 2-byte-aligned types then start every other row 2 mod 4).
std::vector<TypeCase> quant_cases() {
    std::vector<TypeCase> cases;
    for (DType type : kQuantTypes) {
        cases.push_back({type, 37, 768});
        cases.push_back({type, 9, 7 * block_type(type).block_elems});
    }
    return cases;
}

}  // namespace

TEST_CASE("exact gemv matches the double reference for every stored type, aligned and odd shapes") {
    const QuantDotMode exact(cpu::QuantDot::exact);
    std::mt19937 rng(1);
    std::vector<TypeCase> cases = {
        {DType::F32, 37, 512},  {DType::F32, 19, 333},  {DType::F16, 41, 1024}, {DType::F16, 7, 101},
        {DType::BF16, 33, 768}, {DType::BF16, 5, 77},   {DType::FP8_E4M3_B128, 300, 640},
        {DType::FP8_E4M3_B128, 9, 200}, {DType::Q8_0, 45, 1024}, {DType::Q4_K, 29, 1536},
        {DType::Q6_K, 31, 1280}, {DType::Q4_K, 1, 7168}, {DType::Q6_K, 2, 256},
    };
    for (const auto& tc : quant_cases()) cases.push_back(tc);
    for (const auto& tc : cases) {
        CAPTURE(dtype_name(tc.type));
        CAPTURE(tc.cols);
        REQUIRE(cuda::has_gemv_kernel(tc.type));
        const auto m = random_matrix(rng, tc.type, tc.rows, tc.cols);
        const auto x = random_floats(rng, size_t(tc.cols));
        auto dw = upload(m.bytes);
        auto ds = upload(m.scales.empty() ? std::vector<float>{0.0f} : m.scales);
        auto dx = upload(x);
        cuda::DeviceBuffer dy(size_t(tc.rows) * 4);
        const Matrix w{tc.type, tc.rows, tc.cols, dw.data(), ds.as<float>(), 0};
        cuda::gemv(w, dx.as<float>(), dy.as<float>(), nullptr);
        check_products(m, x, tc.cols, 1, download<float>(dy, size_t(tc.rows)), tc.rows, 1e-5);
    }
}

TEST_CASE("gemv on an FP8 row slice uses the scale row of the whole tensor (scale_row_offset)") {
    std::mt19937 rng(2);
    const auto m = random_matrix(rng, DType::FP8_E4M3_B128, 384, 256);
    const auto x = random_floats(rng, 256);
    auto dw = upload(m.bytes);
    auto ds = upload(m.scales);
    auto dx = upload(x);
    cuda::DeviceBuffer dy(100 * 4);
    const Matrix whole{DType::FP8_E4M3_B128, 384, 256, dw.data(), ds.as<float>(), 0};
    cuda::gemv(whole.row_slice(200, 100), dx.as<float>(), dy.as<float>(), nullptr);  // scale rows 1 and 2
    check_products(m, x, 256, 1, download<float>(dy, 100), 100, 1e-5, 200, 100);
}

TEST_CASE("gemv agrees with the CPU backend's gemv (exact dot) for every type both have") {
    std::mt19937 rng(3);
    ThreadPool pool(2);
    // The exact paths of both; the fused ones are compared below.
    const QuantDotMode exact(cpu::QuantDot::exact);
    int n_types = 0;
    for (uint32_t id = 0; id < 2000; ++id) {
        const BlockTypeTraits* traits = find_block_type(id);
        if (!traits || !cpu::has_matmul_kernel(traits->type)) continue;
        const DType type = traits->type;
        CAPTURE(dtype_name(type));
        REQUIRE(cuda::has_gemv_kernel(type));
        ++n_types;
        const int64_t rows = 64, cols = 1024;
        const auto m = random_matrix(rng, type, rows, cols);
        const auto x = random_floats(rng, size_t(cols));
        auto dw = upload(m.bytes);
        auto ds = upload(m.scales.empty() ? std::vector<float>{0.0f} : m.scales);
        auto dx = upload(x);
        cuda::DeviceBuffer dy(size_t(rows) * 4);
        const Matrix hw{type, rows, cols, m.bytes.data(), m.scales.empty() ? nullptr : m.scales.data(), 0};
        const Matrix w{type, rows, cols, dw.data(), ds.as<float>(), 0};
        std::vector<float> cpu_y(static_cast<size_t>(rows));
        cpu::gemv(hw, x.data(), cpu_y.data(), pool);
        cuda::gemv(w, dx.as<float>(), dy.as<float>(), nullptr);
        check_products(m, x, cols, 1, download<float>(dy, size_t(rows)), rows, 1e-5, 0, -1, &cpu_y);
    }
    CHECK(n_types == 16);  // F32, F16, BF16, FP8 and the twelve block types
}

TEST_CASE("exact batched gemv over 11 tokens with strided activations equals the reference per token, every type") {
    const QuantDotMode exact(cpu::QuantDot::exact);
    std::mt19937 rng(4);
    std::vector<DType> types = {DType::BF16, DType::FP8_E4M3_B128};
    types.insert(types.end(), std::begin(kQuantTypes), std::end(kQuantTypes));
    for (DType type : types) {
        CAPTURE(dtype_name(type));
        const int64_t rows = 70, cols = 512, n = 11, xs = cols + 4, ys = rows + 3;
        const auto m = random_matrix(rng, type, rows, cols);
        const auto x = random_floats(rng, size_t(n * xs));
        auto dw = upload(m.bytes);
        auto ds = upload(m.scales.empty() ? std::vector<float>{0.0f} : m.scales);
        auto dx = upload(x);
        cuda::DeviceBuffer dy(size_t(n * ys) * 4);
        const Matrix w{type, rows, cols, dw.data(), ds.as<float>(), 0};
        cuda::gemv_batched(w, dx.as<float>(), xs, n, dy.as<float>(), ys, nullptr);
        check_products(m, x, xs, n, download<float>(dy, size_t(n * ys)), ys, 1e-5);
    }
}

// The fused path quantises activations as the CPU's does and sums the same integers, so it equals
// the CPU's fused gemv up to the order of float additions (the bound the CPU's SIMD paths meet
// against its scalar one), and the exact product within the activation-quantisation bound.
TEST_CASE("fused int8 gemv equals the CPU's fused gemv for every type the CPU fuses, 1 to 11 tokens") {
    const QuantDotMode fused(cpu::QuantDot::fused);
    std::mt19937 rng(12);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    ThreadPool pool(2);
    int n_types = 0;
    for (DType type : kQuantTypes) {
        if (!cpu::quant_dot_supports(type)) continue;
        REQUIRE(cuda::has_q8_gemv_kernel(type));
        ++n_types;
        const int64_t unit = block_type(type).block_elems;
        for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{37, 3 * 256}, {9, 7 * unit}}) {
            const auto m = random_matrix(rng, type, rows, cols);
            auto dw = upload(m.bytes);
            const Matrix hw{type, rows, cols, m.bytes.data()};
            const Matrix w{type, rows, cols, dw.data()};
            for (int64_t n : {1, 3, 8, 11}) {
                CAPTURE(dtype_name(type));
                CAPTURE(cols);
                CAPTURE(n);
                const int64_t xs = cols + 4, ys = rows + 3;
                std::vector<float> x(size_t(n * xs));
                for (auto& v : x) v = normal(rng);
                auto dx = upload(x);
                cuda::DeviceBuffer dy(size_t(n * ys) * 4);
                std::vector<float> cpu_y(size_t(n * ys));
                cpu::gemm(hw, x.data(), xs, n, cpu_y.data(), ys, pool);
                cuda::gemv_batched(w, dx.as<float>(), xs, n, dy.as<float>(), ys, nullptr);
                const auto y = download<float>(dy, size_t(n * ys));
                check_products(m, x, xs, n, y, ys, 1e-5, 0, -1, &cpu_y);
                check_products(m, x, xs, n, y, ys, 1e-2);
            }
        }
    }
    CHECK(n_types == 7);  // Q8_0, Q4_0, Q2_K..Q6_K
}

TEST_CASE("the device activation quantisers write the CPU's int8 blocks byte for byte") {
    std::mt19937 rng(13);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    const int64_t n_tokens = 3, cols8 = 4 * 256 + 3 * 32, cols8k = 4 * 256, xs = cols8 + 4;  // a partial last Q8 group
    std::vector<float> x(size_t(n_tokens * xs));
    for (auto& v : x) v = normal(rng);
    for (int i = 0; i < 32; ++i) x[size_t(xs + i)] = 0.0f;  // an all-zero block: d = 0, qs = 0
    x[300] = 1e-3f * 127.0f, x[301] = -1e-3f * 127.0f * 0.5f;  // exact halves: ties to even
    auto dx = upload(x);
    const int64_t n_groups = (cols8 + 255) / 256, n_blocks = cols8k / 256;
    cuda::DeviceBuffer d8(size_t(n_tokens * n_groups) * sizeof(cpu::ActivationGroupQ8)),
        d8k(size_t(n_tokens * n_blocks) * sizeof(cpu::ActivationBlockQ8K));
    cuda::quantize_activations_q8(dx.as<float>(), xs, n_tokens, cols8, d8.data(), nullptr);
    cuda::quantize_activations_q8k(dx.as<float>(), xs, n_tokens, cols8k, d8k.data(), nullptr);
    const auto got8 = download<cpu::ActivationGroupQ8>(d8, size_t(n_tokens * n_groups));
    const auto got8k = download<cpu::ActivationBlockQ8K>(d8k, size_t(n_tokens * n_blocks));
    for (int64_t t = 0; t < n_tokens; ++t) {
        CAPTURE(t);
        std::vector<cpu::ActivationGroupQ8> want8(static_cast<size_t>(n_groups));
        std::vector<cpu::ActivationBlockQ8K> want8k(static_cast<size_t>(n_blocks));
        cpu::quantize_activations_q8(x.data() + t * xs, want8.data(), cols8);
        cpu::quantize_activations_q8k(x.data() + t * xs, want8k.data(), cols8k);
        for (int64_t b = 0; b < cols8 / 32; ++b) {  // the device leaves a partial group's unused slots alone
            const auto& g = got8[size_t(t * n_groups + b / 8)];
            const auto& w = want8[size_t(b / 8)];
            const int slot = int(b % 8);
            CAPTURE(b);
            CHECK(g.d[slot] == w.d[slot]);
            CHECK(g.sum[slot] == w.sum[slot]);
            CHECK(std::memcmp(g.qs[slot], w.qs[slot], 32) == 0);
        }
        for (int64_t b = 0; b < n_blocks; ++b) {
            const auto& g = got8k[size_t(t * n_blocks + b)];
            const auto& w = want8k[size_t(b)];
            CAPTURE(b);
            CHECK(g.d == w.d);
            CHECK(std::memcmp(g.qs, w.qs, 256) == 0);
            CHECK(std::memcmp(g.bsums, w.bsums, sizeof w.bsums) == 0);
        }
    }
}

TEST_CASE("gemm (BF16 tensor cores, F32 SGEMM) matches the reference within BF16 rounding") {
    std::mt19937 rng(5);
    cuda::Gemm gemm;
    // A scratch of 16 rows of the widest matrix: every quantised case goes through several tiles.
    gemm.reserve(16 * 768, 19 * (768 + 8));
    std::vector<TypeCase> cases = {{DType::F32, 96, 512}, {DType::F16, 130, 768}, {DType::BF16, 64, 256},
                                   {DType::FP8_E4M3_B128, 200, 384}};
    for (DType type : kQuantTypes) cases.push_back({type, 40, 512});
    for (const auto& tc : cases) {
        CAPTURE(dtype_name(tc.type));
        const int64_t n = 19, xs = tc.cols + 8, ys = tc.rows + 1;
        const auto m = random_matrix(rng, tc.type, tc.rows, tc.cols);
        const auto x = random_floats(rng, size_t(n * xs));
        auto dw = upload(m.bytes);
        auto ds = upload(m.scales.empty() ? std::vector<float>{0.0f} : m.scales);
        auto dx = upload(x);
        cuda::DeviceBuffer dy(size_t(n * ys) * 4);
        const Matrix w{tc.type, tc.rows, tc.cols, dw.data(), ds.as<float>(), 0};
        gemm.run(w, dx.as<float>(), xs, n, dy.as<float>(), ys, nullptr);
        // BF16 keeps 8 significant bits: each product is off by at most ~2^-8 relative.
        const double tol = tc.type == DType::F32 ? 1e-5 : 1e-2;
        check_products(m, x, xs, n, download<float>(dy, size_t(n * ys)), ys, tol);
    }
}

TEST_CASE("rms_norm, silu_mul and softmax match the CPU ops row by row") {
    std::mt19937 rng(6);
    const int64_t rows = 5, n = 7168, stride = 7200;
    auto x = random_floats(rng, size_t(rows * stride), -3.0f, 3.0f);
    const auto w = random_floats(rng, size_t(n), 0.5f, 1.5f);
    auto dx = upload(x);
    auto dw = upload(w);
    cuda::DeviceBuffer dout(x.size() * 4);
    cuda::rms_norm(dx.as<float>(), stride, dw.as<float>(), 1e-6f, rows, n, dout.as<float>(), stride, nullptr);
    auto got = download<float>(dout, x.size());
    for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> want(static_cast<size_t>(n));
        cpu::rms_norm(x.data() + r * stride, w.data(), 1e-6f, n, want.data());
        for (int64_t i = 0; i < n; i += 97) CHECK(got[size_t(r * stride + i)] == doctest::Approx(want[size_t(i)]).epsilon(1e-5));
    }

    const auto up = random_floats(rng, x.size());
    auto dup = upload(up);
    cuda::silu_mul(dx.as<float>(), dup.as<float>(), int64_t(x.size()), dout.as<float>(), nullptr);
    got = download<float>(dout, x.size());
    std::vector<float> want(x.size());
    cpu::silu_mul(x.data(), up.data(), int64_t(x.size()), want.data());
    for (size_t i = 0; i < x.size(); i += 31) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-5));

    cuda::softmax(dx.as<float>(), rows, n, stride, nullptr);
    got = download<float>(dx, x.size());
    for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> row(x.begin() + r * stride, x.begin() + r * stride + n);
        cpu::softmax(row.data(), n);
        double sum = 0;
        for (int64_t i = 0; i < n; ++i) {
            sum += got[size_t(r * stride + i)];
            if (i % 53 == 0) CHECK(got[size_t(r * stride + i)] == doctest::Approx(row[size_t(i)]).epsilon(1e-4));
        }
        CHECK(sum == doctest::Approx(1.0).epsilon(1e-4));
    }
}

TEST_CASE("YaRN RoPE on the device rotates every head like the CPU at large positions") {
    std::mt19937 rng(7);
    cpu::RopeYarn rope;
    rope.dim = 64;
    rope.factor = 40.0f;
    rope.mscale = 1.0f;
    rope.mscale_all_dim = 1.0f;
    const auto freq = cpu::yarn_frequencies(rope);
    const float mag = cpu::yarn_attention_factor(rope);
    const int n_heads = 3;
    const int64_t n_tokens = 4, head_stride = 192, token_stride = n_heads * head_stride + 5;
    const std::vector<int64_t> pos = {0, 1, 4095, 163839};
    auto x = random_floats(rng, size_t(n_tokens * token_stride));
    auto dx = upload(x);
    auto dpos = upload(pos);
    auto dfreq = upload(freq);
    cuda::rope_interleaved(dx.as<float>(), n_tokens, n_heads, token_stride, head_stride, rope.dim, dpos.as<int64_t>(),
                           dfreq.as<float>(), mag, nullptr);
    const auto got = download<float>(dx, x.size());
    for (int64_t t = 0; t < n_tokens; ++t)
        for (int h = 0; h < n_heads; ++h) {
            float* v = x.data() + t * token_stride + h * head_stride;
            cpu::rope_interleaved(v, rope.dim, pos[size_t(t)], freq.data(), mag);
            for (int i = 0; i < head_stride; ++i)  // beyond dim: untouched on both
                CHECK(got[size_t(t * token_stride + h * head_stride + i)] == doctest::Approx(v[i]).epsilon(1e-4).scale(1e-3));
        }
}

TEST_CASE("the device router picks the CPU router's experts and weights (V3 sigmoid groups, V2 softmax)") {
    std::mt19937 rng(8);
    cpu::RouterConfig v3;  // 256 experts, 8 groups keep 4, top 8
    cpu::RouterConfig v2;
    v2.n_experts = 64;
    v2.top_k = 6;
    v2.n_group = 1;
    v2.topk_group = 1;
    v2.scoring = cpu::RouterConfig::Scoring::softmax;
    v2.group_score = cpu::RouterConfig::GroupScore::max;
    v2.norm_topk_prob = false;
    v2.routed_scaling_factor = 1.0f;
    for (const auto* cfg : {&v3, &v2}) {
        const int64_t n_tokens = 33;
        const auto logits = random_floats(rng, size_t(n_tokens * cfg->n_experts), -4.0f, 4.0f);
        const auto bias = random_floats(rng, size_t(cfg->n_experts), -0.1f, 0.1f);
        auto dl = upload(logits);
        auto db = upload(bias);
        cuda::DeviceBuffer dids(size_t(n_tokens * cfg->top_k) * 4), dws(size_t(n_tokens * cfg->top_k) * 4);
        cuda::route(dl.as<float>(), db.as<float>(), *cfg, n_tokens, dids.as<int>(), dws.as<float>(), nullptr);
        const auto ids = download<int>(dids, size_t(n_tokens * cfg->top_k));
        const auto ws = download<float>(dws, size_t(n_tokens * cfg->top_k));
        for (int64_t t = 0; t < n_tokens; ++t) {
            std::vector<int> want_ids(size_t(cfg->top_k));
            std::vector<float> want_ws(size_t(cfg->top_k));
            cpu::route(logits.data() + t * cfg->n_experts, bias.data(), *cfg, want_ids.data(), want_ws.data());
            for (int k = 0; k < cfg->top_k; ++k) {
                CHECK(ids[size_t(t * cfg->top_k + k)] == want_ids[size_t(k)]);
                CHECK(ws[size_t(t * cfg->top_k + k)] == doctest::Approx(want_ws[size_t(k)]).epsilon(1e-5));
            }
        }
    }
    cpu::RouterConfig broken = v3;
    broken.top_k = 200;  // more than the 4 kept groups of 32 experts can hold
    cuda::DeviceBuffer scratch(4096);
    CHECK_THROWS_AS(cuda::route(scratch.as<float>(), nullptr, broken, 1, scratch.as<int>(), scratch.as<float>(), nullptr),
                    sluice::Error);
}

TEST_CASE("absorbed MLA attention on the device equals the CPU's over a causal latent cache (11 heads)") {
    std::mt19937 rng(9);
    cpu::AttentionShape shape;
    shape.n_heads = 11;
    shape.kv_rank = 512;
    shape.rope_dim = 64;
    shape.scale = 0.07f;
    const int64_t n_tokens = 3, n_ctx = 300;
    const std::vector<int64_t> n_visible = {1, 150, 300};
    const auto ql = random_floats(rng, size_t(n_tokens * shape.n_heads * shape.kv_rank));
    const auto qr = random_floats(rng, size_t(n_tokens * shape.n_heads * shape.rope_dim));
    const auto cl = random_floats(rng, size_t(n_ctx * shape.kv_rank));
    const auto cr = random_floats(rng, size_t(n_ctx * shape.rope_dim));
    ThreadPool pool(2);
    std::vector<float> want(size_t(n_tokens * shape.n_heads * shape.kv_rank));
    std::vector<float> cpu_scratch(size_t(cpu::attention_scratch_floats(shape, n_ctx, pool.size())));
    cpu::mla_attention_absorbed(shape, n_tokens, ql.data(), qr.data(), cl.data(), cr.data(), n_visible.data(),
                                want.data(), cpu_scratch.data(), pool);
    auto dql = upload(ql), dqr = upload(qr), dcl = upload(cl), dcr = upload(cr), dnv = upload(n_visible);
    cuda::DeviceBuffer dout(want.size() * 4), dscratch(size_t(cuda::attention_scratch_floats(shape, n_tokens, n_ctx)) * 4);
    cuda::mla_attention_absorbed(shape, n_tokens, dql.as<float>(), dqr.as<float>(), dcl.as<float>(), dcr.as<float>(),
                                 dnv.as<int64_t>(), n_ctx, dout.as<float>(), dscratch.as<float>(), nullptr);
    const auto got = download<float>(dout, want.size());
    int bad = 0;
    for (size_t i = 0; i < want.size(); ++i)
        if (std::fabs(got[i] - want[i]) > 1e-4f + 1e-4f * std::fabs(want[i])) ++bad;
    CHECK(bad == 0);
}

TEST_CASE("pinned H2D copies on the copy stream are ordered before compute by an event") {
    const size_t n = 1 << 20;
    cuda::PinnedBuffer host(n * 4);
    for (size_t i = 0; i < n; ++i) host.as<float>()[i] = float(i % 1000);
    cuda::DeviceBuffer dev(n * 4), out(n * 4);
    cuda::StreamPair streams;
    cuda::Event copied;
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(dev.data(), host.data(), n * 4, cudaMemcpyHostToDevice, streams.copy));
    copied.record(streams.copy);
    copied.wait_on(streams.compute);
    // silu_mul(x, 1) on the compute stream reads the copied data only after the event.
    std::vector<float> ones(n, 1.0f);
    auto dones = upload(ones);
    cuda::silu_mul(dev.as<float>(), dones.as<float>(), int64_t(n), out.as<float>(), streams.compute);
    streams.compute.synchronize();
    const auto got = download<float>(out, n);
    for (size_t i = 0; i < n; i += 4099) {
        const float v = float(i % 1000);
        CHECK(got[i] == doctest::Approx(v / (1.0f + std::exp(-v))).epsilon(1e-5));
    }
}

// The device decoders round each step as the CPU dequantisers do: equal bit for bit (== also
// takes -0 for 0, which is the one difference a zero scale may leave).
TEST_CASE("dequantize_to_f32 and dequantize_to_bf16 equal the CPU dequantiser (rounded to bf16) for every type") {
    std::mt19937 rng(10);
    std::vector<DType> types = {DType::F32, DType::F16, DType::BF16, DType::FP8_E4M3_B128};
    types.insert(types.end(), std::begin(kQuantTypes), std::end(kQuantTypes));
    for (DType type : types) {
        CAPTURE(dtype_name(type));
        const int64_t rows = 130, cols = 512;
        const auto m = random_matrix(rng, type, rows, cols);
        auto dw = upload(m.bytes);
        auto ds = upload(m.scales.empty() ? std::vector<float>{0.0f} : m.scales);
        const Matrix w{type, rows, cols, dw.data(), ds.as<float>(), 0};
        cuda::DeviceBuffer out(size_t(rows * cols) * 4), out_bf16(size_t(rows * cols) * 2);
        cuda::dequantize_to_f32(w, out.as<float>(), nullptr);
        cuda::dequantize_to_bf16(w, out_bf16.data(), nullptr);
        const auto got = download<float>(out, size_t(rows * cols));
        const auto got_bf16 = download<uint16_t>(out_bf16, size_t(rows * cols));
        int bad = 0, bad_bf16 = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            if (got[i] != m.dense[i] && bad++ < 5) MESSAGE("f32 weight " << i << ": got " << got[i] << " want " << m.dense[i]);
            if (bf16_to_f32(got_bf16[i]) != bf16_to_f32(f32_to_bf16(m.dense[i])) && bad_bf16++ < 5)
                MESSAGE("bf16 weight " << i << ": got " << bf16_to_f32(got_bf16[i]) << " want " << m.dense[i]);
        }
        CHECK(bad == 0);
        CHECK(bad_bf16 == 0);
    }
}

TEST_CASE("dequantising into an output that is not 16-byte aligned stores element by element, same values") {
    std::mt19937 rng(14);
    for (DType type : {DType::Q4_0, DType::Q4_K, DType::Q6_K}) {
        CAPTURE(dtype_name(type));
        const int64_t rows = 3, cols = 512;
        const auto m = random_matrix(rng, type, rows, cols);
        auto dw = upload(m.bytes);
        cuda::DeviceBuffer out(size_t(rows * cols + 1) * 4);
        cuda::dequantize_to_f32(Matrix{type, rows, cols, dw.data()}, out.as<float>() + 1, nullptr);
        const auto got = download<float>(out, size_t(rows * cols + 1));
        CHECK(std::equal(m.dense.begin(), m.dense.end(), got.begin() + 1));
    }
}

TEST_CASE("gather, add and the fixed-order MoE combine compute what their host loops do") {
    std::mt19937 rng(11);
    const int64_t width = 300, n_rows = 7, n_tokens = 3;
    const int per_token = 2;
    const auto rows = random_floats(rng, size_t(n_rows * width));
    const std::vector<int32_t> index = {6, 0, 3, 3};
    auto drows = upload(rows);
    auto dindex = upload(index);
    cuda::DeviceBuffer gathered(index.size() * size_t(width) * 4);
    cuda::gather_rows(drows.as<float>(), dindex.as<int32_t>(), int64_t(index.size()), width, gathered.as<float>(), nullptr);
    auto got = download<float>(gathered, index.size() * size_t(width));
    for (size_t r = 0; r < index.size(); ++r)
        for (int64_t c = 0; c < width; c += 13) CHECK(got[r * size_t(width) + size_t(c)] == rows[size_t(index[r] * width + c)]);

    // expert_out rows are slots; token t sums its two slots with their weights.
    const std::vector<int32_t> token_slots = {0, 4, 1, 2, 3, 5};
    const std::vector<float> slot_weight = {0.5f, 2.0f, -1.0f, 0.25f, 3.0f, 1.5f};
    auto dslots = upload(token_slots);
    auto dweights = upload(slot_weight);
    cuda::DeviceBuffer combined(size_t(n_tokens * width) * 4);
    cuda::combine_slots(drows.as<float>(), dslots.as<int32_t>(), dweights.as<float>(), n_tokens, per_token, width,
                        combined.as<float>(), nullptr);
    cuda::add_inplace(combined.as<float>(), drows.as<float>(), n_tokens * width, nullptr);
    got = download<float>(combined, size_t(n_tokens * width));
    for (int64_t t = 0; t < n_tokens; ++t)
        for (int64_t c = 0; c < width; ++c) {
            float want = 0.0f;
            for (int j = 0; j < per_token; ++j) {
                const int32_t s = token_slots[size_t(t * per_token + j)];
                want += slot_weight[size_t(s)] * rows[size_t(s * width + c)];
            }
            want += rows[size_t(t * width + c)];
            CHECK(got[size_t(t * width + c)] == doctest::Approx(want).epsilon(1e-6));
        }
}
