// Continuous batching for throughput (sluice batch): up to max_sequences requests in flight,
// each finished one replaced at once; every step carries one decode token per decoding sequence
// and fills the rest with prompt chunks, so one pass over the weights serves both. The caller
// says how many tokens a step may carry: sluice serve the roofline-balanced size StepSizer fits
// (engine/step_sizer.hpp), sluice batch its cap (engine/batch_job.cpp says why).
//
// A request's tokens do not depend on the requests around it: its prompt is cut into chunks of
// prefill_chunk positions from position 0 whatever else is in the step (so each chunk's attention
// is the same computation alone or batched), the matmuls are batch-invariant
// (tests/kernels/batch_invariance_test), and every request samples from its own seeded generator.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "engine/deepseek_v3.hpp"
#include "engine/sampler.hpp"

namespace sluice {

struct ScheduledRequest {
    int64_t id = 0;                 // the caller's
    std::vector<int32_t> prompt;
    int64_t max_new_tokens = 1;
    SamplerOptions sampler;
    bool stop_at_eos = true;
};

// cancelled: the caller withdrew the request (sluice serve: its client went away).
enum class FinishReason { stop, length, cancelled };
const char* finish_reason_name(FinishReason reason);

// Which waiting request starts first, and whose prompt is chunked first.
enum class RequestOrder {
    // In the order added: what a server owes its clients.
    fifo,
    // The most max_new_tokens first (ties in the order added): for an offline job, whose requests
    // are all known. A request that must decode long starts early; short ones' prompts then fill
    // the steps while it decodes, and the job ends on short decodes instead of a tail of near-empty
    // decode-only steps (each a whole pass over the weights for a few tokens).
    longest_output_first,
};

// The smallest cap a step of max_sequences sequences may have by default: a decode token for each
// beside one prompt chunk (what the scheduler requires), and at least 512 tokens. sluice serve's
// default cap, and sluice batch's last choice (batch_step_choices).
inline int64_t least_step_tokens(int max_sequences, int64_t prefill_chunk) {
    return std::max<int64_t>(512, int64_t(max_sequences) + prefill_chunk);
}

struct SchedulerOptions {
    int max_sequences = 1;          // at most the forward's n_sequences
    int64_t prefill_chunk = 256;    // prompt positions per sequence per step
    int64_t max_step_tokens = 512;  // at most the forward's max_batch_tokens
    RequestOrder order = RequestOrder::fifo;
};

// What one step carried.
struct ScheduledStep {
    int n_sequences = 0;       // sequences in the step
    int n_decode = 0;          // decode tokens (one per decoding sequence)
    int64_t n_prefill = 0;     // prompt tokens
    int64_t n_positions = 0;   // cache positions visible to the step's last tokens, summed
    int n_admitted = 0;        // requests that started this step
    int n_finished = 0;
    int64_t target_tokens = 0; // what the step was allowed
    int64_t n_tokens() const { return n_decode + n_prefill; }
};

class BatchScheduler {
public:
    // on_token(id, token, generated so far): true ends the request there (a stop sequence).
    using TokenCallback = std::function<bool(int64_t id, int32_t token)>;
    // on_finish(id, generated tokens, reason): the request is done and its slot is free.
    using FinishCallback = std::function<void(int64_t id, std::span<const int32_t> tokens, FinishReason reason)>;

    BatchScheduler(DeepseekForward& forward, const SchedulerOptions& options, TokenCallback on_token,
                   FinishCallback on_finish);

    // Queues a request; requests start in the options' order. Its prompt plus
    // max_new_tokens must fit the forward's context (the caller checks and reports). May be
    // called between steps at any time (sluice serve adds requests as clients send them).
    void add(ScheduledRequest request);
    // Withdraws a request before the next step: a waiting one is dropped, a running one gives its
    // slot (and so its latent cache) to the next request. on_finish is called with `cancelled`
    // and the tokens generated so far. False when no such request is waiting or running.
    bool cancel(int64_t id);
    // Withdraws every running request, as cancel() does each; waiting ones stay queued. For a step
    // that threw (a read of the model failed): the running requests' caches may hold part of it,
    // the slots start afresh at their next admission. Returns how many were withdrawn.
    int cancel_running();
    bool idle() const { return pending_.empty() && n_active_ == 0; }
    int n_active() const { return n_active_; }
    size_t n_pending() const { return pending_.size(); }
    // Running requests past their prompt: the decode tokens the next step carries.
    int n_decoding() const;

    // Admits what fits, runs one forward step of at most `target_tokens` tokens (never fewer than
    // the decode tokens, and at least one prompt chunk when prompts wait), samples, finishes.
    ScheduledStep step(int64_t target_tokens);

private:
    struct Slot {
        bool active = false;
        ScheduledRequest request;  // moved in at admission
        int64_t prompt_done = 0;   // prompt positions in the cache
        int64_t order = 0;         // admission order
        std::vector<int32_t> generated;
        int32_t next = 0;          // the token to feed at the next step
        std::optional<Sampler> sampler;
    };
    void admit(ScheduledStep& plan);
    void finish(int slot, FinishReason reason);

    DeepseekForward& forward_;
    SchedulerOptions options_;
    TokenCallback on_token_;
    FinishCallback on_finish_;
    int64_t vocab_;
    int64_t context_;
    SamplerScratch scratch_;
    std::deque<ScheduledRequest> pending_;  // added, not yet admitted
    bool pending_sorted_ = true;            // in the options' order (fifo: always)
    std::vector<Slot> slots_;
    int n_active_ = 0;
    int64_t admitted_ = 0;
    // Per-step storage, sized once.
    std::vector<SequenceTokens> entries_;
    std::vector<int> entry_slot_;
    std::vector<int> prefill_order_;
    std::vector<float> logits_;
};

}  // namespace sluice
