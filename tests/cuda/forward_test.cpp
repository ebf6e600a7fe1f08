// The CUDA forward pass against the CPU forward pass (itself checked against transformers in
// tests/engine/forward_test.cpp) on the tiny fixture models: the same prompt's logits, the
// cache across steps, and greedy continuations.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/cuda/cuda_forward.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/model_loader.hpp"

using namespace sluice;

namespace {

std::string fixture(const std::string& name) {
    const char* d = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(d, "SLUICE_TEST_DATA is not set");
    return std::string(d) + "/" + name;
}

const std::vector<int32_t> kPrompt = {1, 17, 42, 7, 99, 3, 250, 11, 64, 5, 128, 33};

double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::max(m, double(std::fabs(x)));
    return m;
}

// CPU logits for every prompt position, then the CUDA pass's, in steps of `step` tokens.
void compare(const std::string& name, int64_t step, int64_t gemm_min_tokens, double relative_tolerance) {
    CAPTURE(name);
    CAPTURE(step);
    CAPTURE(gemm_min_tokens);
    const auto model = load_model(fixture(name));
    const int64_t vocab = model->layout().vocab;
    std::vector<int32_t> prompt;
    for (int32_t t : kPrompt) prompt.push_back(t % int32_t(vocab));
    const size_t n = prompt.size();

    ThreadPool pool(2);
    ForwardOptions cpu_options;
    cpu_options.shape.positions = 64;
    cpu_options.shape.step_tokens = 64;
    DeepseekForward cpu_forward(model->layout(), *model->provider, cpu_options, pool);
    std::vector<float> want(n * size_t(vocab));
    cpu_forward.forward(prompt, true, want.data());

    cuda::CudaForwardOptions options;
    options.max_context = 64;
    options.max_batch_tokens = step;
    options.gemm_min_tokens = gemm_min_tokens;
    options.weight_budget_bytes = int64_t(1) << 30;
    cuda::CudaForward gpu(model->layout(), *model->provider, options);
    std::vector<float> got(n * size_t(vocab));
    gpu.forward(prompt, true, got.data());
    CHECK(gpu.position() == int64_t(n));

    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, double(std::fabs(got[i] - want[i])));
    const double bound = relative_tolerance * max_abs(want);
    MESSAGE(name << " step " << step << ": max |cuda - cpu| = " << worst << " (bound " << bound << ")");
    CHECK(worst <= bound);

    // Greedy decode from the cache, one token per step, on both: the same tokens.
    std::vector<float> cpu_last(static_cast<size_t>(vocab)), gpu_last(static_cast<size_t>(vocab));
    auto argmax = [](const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); };
    int32_t cpu_next = argmax(std::vector<float>(want.end() - vocab, want.end()));
    int32_t gpu_next = argmax(std::vector<float>(got.end() - vocab, got.end()));
    for (int i = 0; i < 8; ++i) {
        REQUIRE(cpu_next == gpu_next);
        const int32_t token = cpu_next;
        cpu_forward.forward({&token, 1}, false, cpu_last.data());
        gpu.forward({&token, 1}, false, gpu_last.data());
        cpu_next = argmax(cpu_last);
        gpu_next = argmax(gpu_last);
    }
    CHECK(cpu_next == gpu_next);
}

}  // namespace

TEST_CASE("CUDA forward (fp32 GEMV path) equals the CPU forward on the tiny V3 model, whole prompt and token by token") {
    compare("hf_tiny_v3", 64, 1 << 30, 2e-5);
    compare("hf_tiny_v3", 1, 1 << 30, 2e-5);
}

TEST_CASE("CUDA forward equals the CPU forward on the V2-Lite-like model (no q_lora, softmax router)") {
    compare("hf_tiny_v2lite", 5, 1 << 30, 2e-5);
}

TEST_CASE("CUDA forward equals the CPU forward with three shared experts") {
    compare("hf_tiny_v3_shared3", 64, 1 << 30, 2e-5);
}

TEST_CASE("CUDA forward through the cuBLAS GEMM path for every step equals the CPU forward (F32 weights: SGEMM)") {
    compare("hf_tiny_v3", 64, 1, 1e-4);
}

TEST_CASE("truncate rewinds the device cache: the same prompt again gives the same logits") {
    const auto model = load_model(fixture("hf_tiny_v3"));
    const int64_t vocab = model->layout().vocab;
    cuda::CudaForwardOptions options;
    options.max_context = 32;
    options.max_batch_tokens = 8;
    options.weight_budget_bytes = int64_t(1) << 30;
    cuda::CudaForward gpu(model->layout(), *model->provider, options);
    const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
    std::vector<float> first(static_cast<size_t>(vocab)), second(static_cast<size_t>(vocab));
    gpu.forward(prompt, false, first.data());
    gpu.truncate(0);
    gpu.forward(prompt, false, second.data());
    CHECK(first == second);
    CHECK_THROWS_AS(gpu.truncate(99), sluice::Error);
}
