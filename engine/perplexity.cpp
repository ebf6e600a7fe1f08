#include "engine/perplexity.hpp"

#include <chrono>
#include <cmath>
#include <vector>

#include "core/error.hpp"

namespace sluice {

PerplexityResult perplexity(DeepseekForward& model, std::span<const int32_t> tokens, int64_t n_ctx,
                            int64_t max_chunks, const std::function<void(int64_t, double)>& on_chunk) {
    const auto& layout = model.layout();
    if (n_ctx < 4) fail(ErrorKind::invalid_input, "perplexity context must be at least 4 tokens, got {}", n_ctx);
    int64_t n_chunks = int64_t(tokens.size()) / n_ctx;
    if (n_chunks == 0)
        fail(ErrorKind::invalid_input, "the text has {} tokens, fewer than one context of {}", tokens.size(), n_ctx);
    if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);

    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> logits(size_t(n_ctx * layout.vocab));
    std::vector<int32_t> chunk(static_cast<size_t>(n_ctx));
    PerplexityResult r;
    double nll_sum = 0;
    for (int64_t c = 0; c < n_chunks; ++c) {
        std::copy_n(tokens.begin() + c * n_ctx, n_ctx, chunk.begin());
        chunk[0] = layout.bos_id;
        model.truncate(0);
        model.forward(chunk, true, logits.data());
        // Score token i+1 from the logits at position i, for the second half of the chunk.
        for (int64_t i = n_ctx / 2; i + 1 < n_ctx; ++i) {
            const float* row = logits.data() + i * layout.vocab;
            float max = row[0];
            for (int64_t v = 1; v < layout.vocab; ++v) max = std::max(max, row[v]);
            double sum = 0;
            for (int64_t v = 0; v < layout.vocab; ++v) sum += std::exp(double(row[v] - max));
            const double log_prob = double(row[chunk[size_t(i + 1)]] - max) - std::log(sum);
            nll_sum -= log_prob;
            ++r.n_scored;
        }
        ++r.n_chunks;
        if (on_chunk) on_chunk(c, std::exp(nll_sum / double(r.n_scored)));
    }
    r.mean_nll = nll_sum / double(r.n_scored);
    r.perplexity = std::exp(r.mean_nll);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

}  // namespace sluice
