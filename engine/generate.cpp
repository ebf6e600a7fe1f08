#include "engine/generate.hpp"

#include <chrono>

#include "core/error.hpp"

namespace sluice {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerateStats generate(DeepseekForward& model, std::span<const int32_t> prompt, const GenerateOptions& options,
                       const std::function<void(int32_t)>& on_token) {
    if (prompt.empty()) fail(ErrorKind::invalid_input, "the prompt has no tokens");
    const auto& layout = model.layout();
    GenerateStats stats;
    stats.n_prompt = int64_t(prompt.size());
    Sampler sampler(options.sampler, layout.vocab);
    std::vector<float> logits(size_t(layout.vocab));

    auto t0 = std::chrono::steady_clock::now();
    if (options.prompt_logits) {
        options.prompt_logits->resize(prompt.size() * size_t(layout.vocab));
        model.forward(prompt, true, options.prompt_logits->data());
        std::copy_n(options.prompt_logits->data() + (prompt.size() - 1) * size_t(layout.vocab), layout.vocab,
                    logits.begin());
    } else {
        model.forward(prompt, false, logits.data());
    }
    stats.prompt_seconds = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < options.max_new_tokens; ++i) {
        const int32_t next = sampler.sample(logits.data());
        ++stats.n_generated;
        on_token(next);
        if (options.stop_at_eos && next == layout.eos_id) {
            stats.stopped_at_eos = true;
            break;
        }
        if (i + 1 == options.max_new_tokens) break;
        model.forward(std::span<const int32_t>(&next, 1), false, logits.data());
    }
    stats.generate_seconds = seconds_since(t0);
    return stats;
}

}  // namespace sluice
