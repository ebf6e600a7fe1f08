#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/cpu/ops.hpp"

using namespace sluice;
using namespace sluice::cpu;

namespace {

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

const int64_t kLengths[] = {1, 7, 16, 37, 512, 1536, 7171};

}  // namespace

TEST_CASE("rms_norm matches a double reference on every path, also in place") {
    std::mt19937 rng(10);
    for (CpuPath path : detail::supported_paths()) {
        const std::string path_label = detail::path_name(path);
        CAPTURE(path_label);
        const auto& k = detail::path_kernels(path);
        for (int64_t n : kLengths) {
            CAPTURE(n);
            std::vector<float> x = random_floats(rng, size_t(n), -3.0f, 3.0f);
            const std::vector<float> w = random_floats(rng, size_t(n), 0.5f, 1.5f);
            double sum = 0;
            for (float v : x) sum += double(v) * v;
            const double inv = 1.0 / std::sqrt(sum / double(n) + 1e-6);
            std::vector<float> out(static_cast<size_t>(n));
            k.rms_norm(x.data(), w.data(), 1e-6f, n, out.data());
            int bad = 0;
            for (int64_t i = 0; i < n; ++i) {
                const double want = double(w[size_t(i)]) * x[size_t(i)] * inv;
                if (std::abs(out[size_t(i)] - want) > 2e-6 * std::abs(want) + 1e-7) ++bad;  // fp32 sum
            }
            CHECK(bad == 0);
            k.rms_norm(x.data(), w.data(), 1e-6f, n, x.data());
            CHECK(x == out);
        }
    }
}

TEST_CASE("silu_mul matches silu(g) * u in double on every path, including large |g|") {
    std::mt19937 rng(11);
    for (CpuPath path : detail::supported_paths()) {
        const std::string path_label = detail::path_name(path);
        CAPTURE(path_label);
        const auto& k = detail::path_kernels(path);
        for (int64_t n : kLengths) {
            CAPTURE(n);
            std::vector<float> g = random_floats(rng, size_t(n), -30.0f, 30.0f);
            if (n > 4) g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f, g[3] = -90.0f;
            const std::vector<float> u = random_floats(rng, size_t(n), -2.0f, 2.0f);
            std::vector<float> out(static_cast<size_t>(n));
            k.silu_mul(g.data(), u.data(), n, out.data());
            int bad = 0;
            for (int64_t i = 0; i < n; ++i) {
                const double gi = g[size_t(i)];
                const double want = gi / (1.0 + std::exp(-gi)) * u[size_t(i)];
                if (std::abs(out[size_t(i)] - want) > 2e-6 * std::abs(want) + 1e-30) ++bad;  // exp ~2 ulp
            }
            CHECK(bad == 0);
        }
    }
}

TEST_CASE("softmax matches a double reference on every path and gives masked -inf exactly zero") {
    std::mt19937 rng(12);
    for (CpuPath path : detail::supported_paths()) {
        const std::string path_label = detail::path_name(path);
        CAPTURE(path_label);
        const auto& k = detail::path_kernels(path);
        for (int64_t n : kLengths) {
            CAPTURE(n);
            std::vector<float> x = random_floats(rng, size_t(n), -40.0f, 40.0f);
            if (n > 3) x[1] = -std::numeric_limits<float>::infinity();
            double max_x = -INFINITY;
            for (float v : x) max_x = std::max<double>(max_x, v);
            double sum = 0;
            for (float v : x) sum += std::exp(double(v) - max_x);
            std::vector<float> p = x;
            k.softmax(p.data(), n);
            int bad = 0;
            double total = 0;
            for (int64_t i = 0; i < n; ++i) {
                const double want = std::exp(double(x[size_t(i)]) - max_x) / sum;
                if (std::abs(p[size_t(i)] - want) > 3e-6 * want + 1e-12) ++bad;
                total += p[size_t(i)];
            }
            CHECK(bad == 0);
            CHECK(total == doctest::Approx(1.0).epsilon(1e-5));
            if (n > 3) CHECK(p[1] == 0.0f);
        }
    }
}

TEST_CASE("dot, axpy and scale match double references on every path") {
    std::mt19937 rng(13);
    for (CpuPath path : detail::supported_paths()) {
        const std::string path_label = detail::path_name(path);
        CAPTURE(path_label);
        const auto& k = detail::path_kernels(path);
        for (int64_t n : kLengths) {
            const std::vector<float> a = random_floats(rng, size_t(n), -1.0f, 1.0f);
            const std::vector<float> b = random_floats(rng, size_t(n), -1.0f, 1.0f);
            double want = 0, magnitude = 0;
            for (int64_t i = 0; i < n; ++i) {
                want += double(a[size_t(i)]) * b[size_t(i)];
                magnitude += std::abs(double(a[size_t(i)]) * b[size_t(i)]);
            }
            CHECK(std::abs(k.dot(a.data(), b.data(), n) - want) <= 2e-6 * magnitude + 1e-7);
            std::vector<float> y = b;
            k.axpy(0.75f, a.data(), y.data(), n);
            k.scale(y.data(), 2.0f, n);
            for (int64_t i = 0; i < n; ++i)
                CHECK(y[size_t(i)] == doctest::Approx(2.0 * (b[size_t(i)] + 0.75 * a[size_t(i)])).epsilon(1e-6));
        }
    }
}

TEST_CASE("YaRN frequencies for V3 keep pairs 0..10, divide 23..31 by 40 and blend 11..22 linearly") {
    RopeYarn rope;  // V3: dim 64, theta 1e4, factor 40, L0 4096, beta 32/1, mscale 1/1
    rope.factor = 40.0f;
    const std::vector<float> freq = yarn_frequencies(rope);
    REQUIRE(freq.size() == 32);
    auto ratio = [&](int i) { return double(freq[size_t(i)]) / std::pow(10000.0, -2.0 * i / 64); };
    for (int i = 0; i <= 10; ++i) CHECK(ratio(i) == doctest::Approx(1.0).epsilon(1e-6));
    for (int i = 23; i < 32; ++i) CHECK(ratio(i) == doctest::Approx(1.0 / 40).epsilon(1e-6));
    CHECK(ratio(11) == doctest::Approx(0.925).epsilon(1e-6));
    CHECK(ratio(15) == doctest::Approx(0.625).epsilon(1e-6));
    CHECK(ratio(22) == doctest::Approx(0.1).epsilon(1e-6));

    RopeYarn plain;  // factor 1: no YaRN
    const std::vector<float> base = yarn_frequencies(plain);
    for (int i = 0; i < 32; ++i) CHECK(base[size_t(i)] == doctest::Approx(std::pow(10000.0, -2.0 * i / 64)));
}

TEST_CASE("YaRN softmax scale is 0.1352338 for V3 and the rotation magnitude stays 1") {
    RopeYarn v3;
    v3.factor = 40.0f;
    CHECK(yarn_softmax_scale(v3, 192) == doctest::Approx(0.1352338).epsilon(1e-6));
    CHECK(yarn_attention_factor(v3) == doctest::Approx(1.0).epsilon(1e-7));
    RopeYarn v2 = v3;  // V2 / V2-Lite: mscale = mscale_all_dim = 0.707
    v2.mscale = v2.mscale_all_dim = 0.707f;
    CHECK(yarn_softmax_scale(v2, 192) == doctest::Approx(1.58963 / std::sqrt(192.0)).epsilon(1e-5));
    RopeYarn unscaled;
    CHECK(yarn_softmax_scale(unscaled, 192) == doctest::Approx(1.0 / std::sqrt(192.0)).epsilon(1e-7));
    RopeYarn generic = v3;  // mscale_all_dim 0: the generic YaRN factor 0.1 ln 40 + 1 on cos/sin
    generic.mscale_all_dim = 0.0f;
    CHECK(yarn_attention_factor(generic) == doctest::Approx(0.1 * std::log(40.0) + 1.0).epsilon(1e-6));
}

TEST_CASE("rope_interleaved rotates adjacent pairs by pos * f_i and is the identity at position 0") {
    RopeYarn rope;
    rope.factor = 40.0f;
    const std::vector<float> freq = yarn_frequencies(rope);
    std::mt19937 rng(14);
    const std::vector<float> x = random_floats(rng, 64, -1.0f, 1.0f);
    std::vector<float> at0 = x;
    rope_interleaved(at0.data(), 64, 0, freq.data(), 1.0f);
    CHECK(at0 == x);
    for (int64_t pos : {1, 17, 4095, 100000}) {
        std::vector<float> y = x;
        rope_interleaved(y.data(), 64, pos, freq.data(), 1.0f);
        for (int i = 0; i < 32; ++i) {
            const double angle = double(float(pos) * freq[size_t(i)]);
            const double a = x[size_t(2 * i)], b = x[size_t(2 * i + 1)];
            CHECK(y[size_t(2 * i)] == doctest::Approx(a * std::cos(angle) - b * std::sin(angle)).epsilon(1e-5));
            CHECK(y[size_t(2 * i + 1)] == doctest::Approx(a * std::sin(angle) + b * std::cos(angle)).epsilon(1e-5));
        }
    }
    std::vector<float> scaled = x;
    rope_interleaved(scaled.data(), 64, 0, freq.data(), 2.0f);
    CHECK(scaled[5] == doctest::Approx(2.0 * x[5]));
}
