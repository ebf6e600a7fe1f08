// Helpers of the device forward tests (forward_test on a real GPU and the emulated device,
// pipeline_test on the emulated device): the CPU reference, a forward pass on the CUDA backend
// over a host provider, the streamer over the model file, and the comparison at the tolerances
// the CPU backend uses.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/thread_pool.hpp"
#include "engine/background_segment_io.hpp"
#include "engine/cuda/cuda_backend.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/device_weights.hpp"
#include "engine/model_loader.hpp"
#include "engine/reader_segment_io.hpp"
#include "engine/streamer.hpp"
#include "tests/test_data.hpp"

namespace sluice::test {

inline const std::vector<int32_t> kPrompt = {1, 17, 42, 7, 99, 3, 250, 11, 64, 5, 128, 33};

inline std::vector<int32_t> prompt_for(int64_t vocab) {
    std::vector<int32_t> p;
    for (int32_t t : kPrompt) p.push_back(t % int32_t(vocab));
    return p;
}

inline double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::max(m, double(std::fabs(x)));
    return m;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
}

inline int32_t argmax(const float* v, int64_t n) { return int32_t(std::max_element(v, v + n) - v); }

// The prompt's logits at every position, then `decode` greedy steps one token at a time (their
// logits appended), in steps of `step` tokens.
inline std::vector<float> prompt_and_decode(DeepseekForward& forward, const std::vector<int32_t>& prompt, int decode) {
    const int64_t vocab = forward.layout().vocab;
    std::vector<float> out(prompt.size() * size_t(vocab));
    forward.forward(prompt, true, out.data());
    std::vector<float> step(static_cast<size_t>(vocab));
    int32_t next = argmax(out.data() + (prompt.size() - 1) * size_t(vocab), vocab);
    for (int i = 0; i < decode; ++i) {
        forward.forward({&next, 1}, false, step.data());
        out.insert(out.end(), step.begin(), step.end());
        next = argmax(step.data(), vocab);
    }
    return out;
}

// Greedy tokens chosen by each position of a prompt_and_decode result.
inline std::vector<int32_t> choices(const std::vector<float>& logits, int64_t vocab) {
    std::vector<int32_t> c;
    for (size_t r = 0; r < logits.size() / size_t(vocab); ++r) c.push_back(argmax(logits.data() + r * size_t(vocab), vocab));
    return c;
}

inline ForwardOptions options_of(int64_t step, AttentionForm form = AttentionForm::automatic, int n_sequences = 1) {
    ForwardOptions o;
    o.shape.positions = 64;
    o.shape.step_tokens = step;
    o.attention = form;
    o.shape.n_sequences = n_sequences;
    o.decompress_block = 5;  // several blocks per prompt: the online softmax carries across them
    return o;
}

// The CPU reference: resident weights, exact dequantisation for quantised files.
inline std::vector<float> cpu_logits(const std::string& name, const ForwardOptions& options, int decode) {
    const auto model = load_model(fixture(name));
    ThreadPool pool(2);
    DeepseekForward forward(model->layout(), *model->provider, options, pool);
    return prompt_and_decode(forward, prompt_for(model->layout().vocab), decode);
}

// A forward pass on the CUDA backend over a host provider.
struct DeviceForward {
    std::unique_ptr<Backend> backend;
    std::unique_ptr<DeviceWeights> weights;
    std::unique_ptr<DeepseekForward> forward;

    DeviceForward(const OpenModel& model, WeightProvider& host, const ForwardOptions& options,
                  const CudaBackendOptions& backend_options, const DeviceWeightsOptions& device_options) {
        backend = make_cuda_backend(backend_options);
        weights = std::make_unique<DeviceWeights>(model.layout, model.plan, *model.source, host, *backend, device_options);
        forward = std::make_unique<DeepseekForward>(model.layout, *weights, options, *backend);
    }
};

inline DeviceWeightsOptions all_dense_resident(const OpenModel& model) {
    DeviceWeightsOptions o;
    o.dense_resident.assign(model.plan.layers.size(), 1);
    return o;
}

inline void check_close(const std::vector<float>& got, const std::vector<float>& want, int64_t vocab, double tolerance) {
    const double worst = max_abs_diff(got, want);
    const double bound = tolerance * max_abs(want);
    MESSAGE("max |cuda - cpu| = " << worst << " (bound " << bound << ")");
    CHECK(worst <= bound);
    CHECK(choices(got, vocab) == choices(want, vocab));
}

// Resident host weights, every dense segment resident on the device.
inline void compare_resident(const std::string& name, const ForwardOptions& options, int64_t gemm_min_tokens,
                      double tolerance) {
    CAPTURE(name);
    CAPTURE(options.shape.step_tokens);
    CAPTURE(attention_form_name(options.attention));
    CAPTURE(gemm_min_tokens);
    const auto want = cpu_logits(name, options, 6);
    const auto model = load_model(fixture(name));
    CudaBackendOptions bo;
    bo.gemm_min_tokens = gemm_min_tokens;
    DeviceForward gpu(*model->open, *model->provider, options, bo, all_dense_resident(*model->open));
    const auto got = prompt_and_decode(*gpu.forward, prompt_for(model->layout().vocab), 6);
    check_close(got, want, model->layout().vocab, tolerance);
}

inline StreamerOptions streamer_options(int host_expert_buffers, bool wrong_predictions,
                                        std::vector<uint8_t> dense_elsewhere = {}) {
    StreamerOptions so;
    so.resident = ResidentMode::none;
    so.expert_buffers = host_expert_buffers;
    so.force_wrong_predictions = wrong_predictions;
    so.dense_elsewhere = std::move(dense_elsewhere);
    return so;
}

// The streamer reads the file; the device holds only `dense_slots` + `expert_slots` slots.
// `wrap`, when given, puts a SegmentIo of the test's between the streamer and the reader.
struct StreamedModel {
    std::unique_ptr<OpenModel> model;
    ReaderSegmentIo reader;
    std::optional<BackgroundSegmentIo> driven;
    std::unique_ptr<SegmentIo> wrapper;
    std::unique_ptr<Streamer> streamer;

    StreamedModel(const std::string& path, const StreamerOptions& so,
                  const std::function<std::unique_ptr<SegmentIo>(SegmentIo&)>& wrap = {})
        : model(open_model(path)), reader(model->source->files(), io::ReaderOptions{}) {
        driven.emplace(reader);
        if (wrap) wrapper = wrap(*driven);
        streamer = std::make_unique<Streamer>(model->layout, model->plan, *model->source,
                                              wrapper ? *wrapper : static_cast<SegmentIo&>(*driven), so);
    }
    StreamedModel(const std::string& path, int host_expert_buffers, bool wrong_predictions,
                  std::vector<uint8_t> dense_elsewhere = {})
        : StreamedModel(path, streamer_options(host_expert_buffers, wrong_predictions, std::move(dense_elsewhere))) {}
    ~StreamedModel() {
        streamer.reset();  // its reads land before the reader goes
        wrapper.reset();
        driven.reset();
    }
};

}  // namespace sluice::test
