// The forward pass on the CUDA backend against the same pass on the CPU backend (itself checked
// against transformers and llama.cpp in tests/engine): one model file (engine/deepseek_v3), two
// backends. Weights reach the device through DeviceWeights, from resident host weights or from the
// streamer reading the file, through device slots fewer than a layer's experts. Runs on a real GPU
// and, in every CI run, on the emulated device (cudaemu/).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "kernels/cpu/matmul.hpp"
#include "tests/cuda/device_forward.hpp"
#include "tests/engine/trace_check.hpp"

using namespace sluice;
using namespace sluice::test;

TEST_CASE("CUDA backend (GEMV path) equals the CPU backend on the tiny V3 model, whole prompt and token by token") {
    compare_resident("hf_tiny_v3", options_of(64), 1 << 30, 2e-5);
    compare_resident("hf_tiny_v3", options_of(1), 1 << 30, 2e-5);
}

TEST_CASE("CUDA backend equals the CPU backend on the V2-Lite-like model (no q_lora, softmax router)") {
    compare_resident("hf_tiny_v2lite", options_of(5), 1 << 30, 2e-5);
}

TEST_CASE("CUDA backend equals the CPU backend with three shared experts") {
    compare_resident("hf_tiny_v3_shared3", options_of(64), 1 << 30, 2e-5);
}

TEST_CASE("CUDA backend through the cuBLAS GEMM path for every step (F32 weights: SGEMM)") {
    compare_resident("hf_tiny_v3", options_of(64), 1, 1e-4);
}

TEST_CASE("both forms of MLA on the device equal the CPU's absorbed form") {
    for (const auto form : {AttentionForm::absorbed, AttentionForm::decompressed}) {
        const auto want = cpu_logits("hf_tiny_v3", options_of(64, AttentionForm::absorbed), 4);
        const auto model = load_model(fixture("hf_tiny_v3"));
        DeviceForward gpu(*model->open, *model->provider, options_of(64, form), CudaBackendOptions{},
                          all_dense_resident(*model->open));
        CAPTURE(attention_form_name(form));
        check_close(prompt_and_decode(*gpu.forward, prompt_for(model->layout().vocab), 4), want, model->layout().vocab,
                    5e-5);
    }
}

TEST_CASE("a batched step over three sequences on the device equals each sequence alone on the CPU") {
    const auto model = load_model(fixture("hf_tiny_v3"));
    const int64_t vocab = model->layout().vocab;
    const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4, 5, 6, 7}, {9, 8}, {30, 31, 32, 33}};
    ThreadPool pool(2);
    std::vector<std::vector<float>> want;
    for (const auto& p : prompts) {
        DeepseekForward cpu(model->layout(), *model->provider, options_of(32), pool);
        std::vector<float> out(static_cast<size_t>(vocab));
        cpu.forward(p, false, out.data());
        want.push_back(out);
    }
    DeviceForward gpu(*model->open, *model->provider, options_of(32, AttentionForm::automatic, 3), CudaBackendOptions{},
                      all_dense_resident(*model->open));
    std::vector<SequenceTokens> batch;
    for (size_t i = 0; i < prompts.size(); ++i) batch.push_back({int(i), prompts[i], false});
    std::vector<float> got(prompts.size() * size_t(vocab));
    gpu.forward->forward_batch(batch, got.data());
    for (size_t i = 0; i < prompts.size(); ++i) {
        const std::vector<float> row(got.begin() + ptrdiff_t(i * size_t(vocab)), got.begin() + ptrdiff_t((i + 1) * size_t(vocab)));
        CAPTURE(i);
        CHECK(max_abs_diff(row, want[i]) <= 2e-5 * max_abs(want[i]));
    }
}

TEST_CASE("streamed from disk through two device expert slots (fewer than a layer's experts) equals the CPU") {
    for (const char* name : {"hf_tiny_v3", "hf_tiny_v2lite", "hf_tiny_v3_shared3"}) {
        CAPTURE(name);
        for (const bool wrong : {false, true}) {
            CAPTURE(wrong);
            const auto want = cpu_logits(name, options_of(4), 6);
            StreamedModel streamed(fixture(name), 0, wrong);
            DeviceWeightsOptions dwo;  // nothing resident: every dense segment through 2 slots
            dwo.dense_slots = 2;
            dwo.expert_slots = 2;
            DeviceForward gpu(*streamed.model, *streamed.streamer, options_of(4), CudaBackendOptions{}, dwo);
            check_close(prompt_and_decode(*gpu.forward, prompt_for(streamed.model->layout.vocab), 6), want,
                        streamed.model->layout.vocab, 2e-5);
            CHECK(gpu.weights->stats().expert_copies > 0);
            CHECK(gpu.weights->stats().dense_copies > 0);
        }
    }
}

TEST_CASE("the device keys experts by segment, not address: a one-buffer host pool hands out every expert at the same "
          "address") {
    const auto want = cpu_logits("hf_tiny_v3", options_of(4), 6);
    StreamedModel streamed(fixture("hf_tiny_v3"), 1, false);
    DeviceWeightsOptions dwo;
    dwo.expert_slots = 64;  // room to keep every expert: a wrong key would hand out a stale one
    DeviceForward gpu(*streamed.model, *streamed.streamer, options_of(4), CudaBackendOptions{}, dwo);
    check_close(prompt_and_decode(*gpu.forward, prompt_for(streamed.model->layout.vocab), 6), want,
                streamed.model->layout.vocab, 2e-5);
    CHECK(gpu.weights->stats().expert_hits > 0);  // later steps found experts on the device
}

TEST_CASE("dense segments resident on the device are never read by the streamer") {
    const auto want = cpu_logits("hf_tiny_v3", options_of(8), 4);
    const auto open = open_model(fixture("hf_tiny_v3"));
    std::vector<uint8_t> resident(open->plan.layers.size(), 0);
    resident[0] = 1;  // the first layer's dense part stays on the device; the rest streams
    StreamedModel streamed(fixture("hf_tiny_v3"), 0, false, resident);
    Trace trace;
    streamed.streamer->set_trace(&trace);
    DeviceWeightsOptions dwo;
    dwo.dense_resident = resident;
    DeviceForward gpu(*streamed.model, *streamed.streamer, options_of(8), CudaBackendOptions{}, dwo);
    check_close(prompt_and_decode(*gpu.forward, prompt_for(streamed.model->layout.vocab), 4), want,
                streamed.model->layout.vocab, 2e-5);
    std::set<int> dense_layers_read;
    for (const auto& s : trace.spans())
        if (s.name == "read dense") dense_layers_read.insert(s.args.at("layer").get<int>());
    CHECK(dense_layers_read == std::set<int>{1, 2});
    streamed.streamer->set_trace(nullptr);
}

TEST_CASE("the device timeline keeps the pipeline's promises: no expert computed before its copy ended, no host buffer "
          "refilled while its copy ran, reads in flight while the device computes") {
    const auto want = cpu_logits("hf_tiny_v3", options_of(4), 6);
    StreamedModel streamed(fixture("hf_tiny_v3"), 0, false);
    Trace trace;
    streamed.streamer->set_trace(&trace);
    DeviceWeightsOptions dwo;
    dwo.dense_slots = 2;
    dwo.expert_slots = 2;
    DeviceForward gpu(*streamed.model, *streamed.streamer, options_of(4), CudaBackendOptions{}, dwo);
    gpu.backend->set_trace(&trace);
    check_close(prompt_and_decode(*gpu.forward, prompt_for(streamed.model->layout.vocab), 6), want,
                streamed.model->layout.vocab, 2e-5);
    gpu.backend->synchronize();
    const auto json = trace.to_json();
    const auto spans = test::trace_spans(json);
    const int64_t tolerance = json["otherData"]["device_clock_uncertainty_us"];
    MESSAGE("device clock placed within " << tolerance << " us");
    CHECK(test::check_data_before_compute(spans, int(Trace::Track::copies), "copy expert", int(Trace::Track::device),
                                          "expert") > 0);
    CHECK(test::check_no_refill_during_copy(spans, int(Trace::Track::copies), int(Trace::Track::reads), tolerance) > 0);
    CHECK(test::reads_overlap_compute(spans, int(Trace::Track::reads), int(Trace::Track::device)));
    streamed.streamer->set_trace(nullptr);
    gpu.backend->set_trace(nullptr);
}

TEST_CASE("GGUF files of every quantisation llama.cpp wrote on the device equal the CPU's exact dequantisation") {
    // Decode GEMVs (the prefill GEMM multiplies in BF16: on these tiny models its rounding flips
    // router choices, so logits are compared on the GEMV path, where the device is exact too).
    cpu::set_quant_dot(cpu::QuantDot::exact);
    for (const char* name : {"llamacpp/hf_tiny_v3.Q8_0.gguf", "llamacpp/hf_tiny_v3.F16.gguf", "llamacpp/hf_tiny_v2lite.F16.gguf",
                             "llamacpp/hf_tiny_v3.Q4_K_M.gguf", "llamacpp/hf_tiny_v3.Q2_K.gguf"})
        compare_resident(name, options_of(64), int64_t(1) << 30, 2e-5);
    cpu::set_quant_dot(cpu::QuantDot::fused);
}

TEST_CASE("the fused int8 path on the device follows the CPU's fused path on a Q4_K_M file") {
    // Both quantise activations to 8 bits per block the same way; they differ in summation order.
    compare_resident("llamacpp/hf_tiny_v3.Q4_K_M.gguf", options_of(64), int64_t(1) << 30, 1e-3);
}

TEST_CASE("device memory stays under the backend's limit, and a limit too small is refused with a clear error") {
    const auto model = load_model(fixture("hf_tiny_v3"));
    uint64_t needed = 0;
    {
        DeviceForward gpu(*model->open, *model->provider, options_of(8), CudaBackendOptions{},
                          all_dense_resident(*model->open));
        needed = uint64_t(gpu.backend->allocated_bytes());
    }
    CudaBackendOptions exact;
    exact.memory_limit_bytes = needed;
    DeviceForward fits(*model->open, *model->provider, options_of(8), exact, all_dense_resident(*model->open));
    CHECK(uint64_t(fits.backend->allocated_bytes()) <= needed);
    std::vector<float> logits(static_cast<size_t>(model->layout().vocab));
    fits.forward->forward(prompt_for(model->layout().vocab), false, logits.data());

    CudaBackendOptions tight;
    tight.memory_limit_bytes = needed / 2;
    try {
        DeviceForward refused(*model->open, *model->provider, options_of(8), tight, all_dense_resident(*model->open));
        FAIL("a device budget of half what is needed was accepted");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::out_of_memory);
        CHECK(std::string(e.what()).find("--vram") != std::string::npos);
    }
}

TEST_CASE("truncate rewinds the device cache: the same prompt again gives the same logits") {
    const auto model = load_model(fixture("hf_tiny_v3"));
    const int64_t vocab = model->layout().vocab;
    DeviceForward gpu(*model->open, *model->provider, options_of(8), CudaBackendOptions{}, all_dense_resident(*model->open));
    const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
    std::vector<float> first(static_cast<size_t>(vocab)), second(static_cast<size_t>(vocab));
    gpu.forward->forward(prompt, false, first.data());
    gpu.forward->truncate(0);
    gpu.forward->forward(prompt, false, second.data());
    CHECK(first == second);
    CHECK_THROWS_AS(gpu.forward->truncate(99), sluice::Error);
}
