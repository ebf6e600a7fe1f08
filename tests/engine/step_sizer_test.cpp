// StepSizer: from steps whose compute is a fixed part plus a part per token, the target is the
// balanced size (compute = read), not read / average cost per token; decode tokens, which cost
// more, are fitted apart when the steps let them be; noisy or degenerate timings keep the target
// within its bounds.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>

#include "engine/step_sizer.hpp"

using namespace sluice;

TEST_CASE("the target is the size whose fixed plus per-token compute equals the read time") {
    // 2 s fixed + 25 ms a token against 10.5 s of reads: balanced at 340 tokens. The steps carry
    // sizes the target did not choose (decode-only steps, prompt chunks that did not fit), as a
    // scheduler's steps do; their average cost per token (2/t + 0.025) would say 94 to 341.
    StepSizer sizer(16, 1024);
    CHECK(sizer.target() == 1024);  // nothing measured: the largest step
    const int64_t sizes[] = {60, 480, 130, 300, 500, 90, 250, 410, 170, 360};
    for (int i = 0; i < 40; ++i) {
        const int64_t t = sizes[i % 10];
        sizer.observe(0, t, 10.5, 2.0 + 0.025 * double(t));
    }
    CHECK(sizer.target() >= 339);
    CHECK(sizer.target() <= 340);
    REQUIRE(sizer.model());
    CHECK(sizer.model()->fixed_s == doctest::Approx(2.0).epsilon(1e-6));
    CHECK(sizer.model()->per_prompt_s == doctest::Approx(0.025).epsilon(1e-6));
}

TEST_CASE("decode tokens are costed apart from prompt tokens when both vary") {
    // 1 s + 60 ms a decode token + 20 ms a prompt token; reads 10 s. With d decode tokens the
    // balanced step is d + (10 - 1 - 0.06 d) / 0.02 tokens.
    StepSizer sizer(16, 1024);
    std::mt19937 rng(5);
    std::uniform_int_distribution<int64_t> decode(0, 100), prompt(50, 400);
    for (int i = 0; i < 60; ++i) {
        const int64_t d = decode(rng), p = prompt(rng);
        sizer.observe(d, p, 10.0, 1.0 + 0.06 * double(d) + 0.02 * double(p));
    }
    for (int64_t d : {0, 50, 120}) {
        INFO(d, " decode tokens");
        const double balanced = double(d) + (10.0 - 1.0 - 0.06 * double(d)) / 0.02;
        CHECK(double(sizer.target(d)) == doctest::Approx(balanced).epsilon(0.01));
    }
    // Fixed and decode cost above the read time (1 + 0.06 x 200 = 13 s): no room for prompt tokens.
    CHECK(sizer.target(200) <= 200);
    REQUIRE(sizer.model());
    CHECK(sizer.model()->per_decode_s == doctest::Approx(0.06).epsilon(1e-6));
    CHECK(sizer.model()->per_prompt_s == doctest::Approx(0.02).epsilon(1e-6));
}

TEST_CASE("steps all of one size fall back to read time over compute per token") {
    // Nothing separates fixed from per-token cost: 10 s / (8 s / 200 tokens) = 250.
    StepSizer sizer(16, 1024);
    for (int i = 0; i < 30; ++i) sizer.observe(20, 180, 10.0, 8.0);
    CHECK(!sizer.model());
    CHECK(sizer.target(20) == 250);
    // Nothing read (every weight resident): no reason to hold steps back.
    StepSizer resident(16, 1024);
    resident.observe(0, 100, 0.0, 3.0);
    CHECK(resident.target() == 1024);
}

TEST_CASE("steps alike in size after a fit keep its shape and follow the compute as it changes") {
    StepSizer sizer(16, 1024);
    const int64_t sizes[] = {60, 480, 130, 300, 500, 90, 250, 410, 170, 360};
    for (int i = 0; i < 40; ++i) sizer.observe(0, sizes[i % 10], 10.5, 2.0 + 0.025 * double(sizes[i % 10]));
    CHECK(sizer.target() == doctest::Approx(340).epsilon(0.01));
    // Then every step carries 300 tokens and the cores get 40% faster (another job ended): 1.2 s +
    // 15 ms a token, balanced at (10.5 - 1.2) / 0.015 = 620 tokens. Kept as fitted, the target
    // would stay at 340 (and a step of 340 would compute 6.3 s of a 10.5 s read).
    for (int i = 0; i < 150; ++i) sizer.observe(0, 300, 10.5, 0.6 * (2.0 + 0.025 * 300));
    // Within 15%: the steps in between, some of the old sizes and speed and some of the new, are
    // fitted too and tilt the shape (here to 553).
    CHECK(double(sizer.target()) == doctest::Approx(620).epsilon(0.15));
}

TEST_CASE("noisy and degenerate timings keep the target within its bounds") {
    StepSizer sizer(64, 512);
    std::mt19937 rng(9);
    std::uniform_int_distribution<int64_t> decode(0, 130), prompt(0, 600);
    std::normal_distribution<double> noise(0.0, 1.5);
    std::uniform_real_distribution<double> read(0.0, 20.0);
    int in_range = 0;
    for (int i = 0; i < 400; ++i) {
        const int64_t d = decode(rng), p = i % 7 == 3 ? 0 : prompt(rng);
        // Jumps in read time, compute below zero after noise, and now and then a step the timer
        // missed (no compute at all).
        const double compute = i % 31 == 0 ? 0.0 : 2.0 + 0.025 * double(d + p) + noise(rng);
        sizer.observe(d, p, i % 50 < 40 ? 10.5 + noise(rng) : read(rng), compute);
        for (int64_t q : {0, 40, 130, 10000}) {
            const int64_t t = sizer.target(q);
            REQUIRE(t >= 64);
            REQUIRE(t <= 512);
        }
        // Through the noise the fit still finds the balanced size (340) most of the time.
        if (i % 50 >= 20 && i % 50 < 40) in_range += sizer.target() >= 272 && sizer.target() <= 408;
    }
    CHECK(in_range >= 0.8 * 8 * 20);
}
