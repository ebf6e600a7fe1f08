// Perplexity over a token stream, scored the way llama.cpp's perplexity tool does so the
// figures compare across engines: the text is cut into chunks of n_ctx tokens, each chunk
// starts from an empty cache with its first token replaced by BOS, and only the second half
// of each chunk is scored (every scored token then sees at least n_ctx/2 of context).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "engine/deepseek_v3.hpp"

namespace sluice {

struct PerplexityResult {
    int64_t n_chunks = 0;
    int64_t n_scored = 0;
    double mean_nll = 0;
    double perplexity = 0;
    double seconds = 0;
};

// on_chunk(chunk_index, running_perplexity) after each chunk, for progress.
PerplexityResult perplexity(DeepseekForward& model, std::span<const int32_t> tokens, int64_t n_ctx,
                            int64_t max_chunks, const std::function<void(int64_t, double)>& on_chunk);

}  // namespace sluice
