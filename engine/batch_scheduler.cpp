#include "engine/batch_scheduler.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace sluice {

const char* finish_reason_name(FinishReason reason) {
    switch (reason) {
        case FinishReason::stop: return "stop";
        case FinishReason::length: return "length";
        case FinishReason::cancelled: return "cancelled";
    }
    return "?";
}

BatchScheduler::BatchScheduler(DeepseekForward& forward, const SchedulerOptions& options, TokenCallback on_token,
                               FinishCallback on_finish)
    : forward_(forward), options_(options), on_token_(std::move(on_token)), on_finish_(std::move(on_finish)),
      vocab_(forward.layout().vocab), context_(forward.shape().positions), scratch_(forward.layout().vocab) {
    const RunShape& shape = forward.shape();
    if (options_.max_sequences < 1 || options_.max_sequences > shape.n_sequences)
        fail(ErrorKind::invalid_input, "max sequences {} must be in [1, {}] (the forward's sequences)",
             options_.max_sequences, shape.n_sequences);
    if (options_.prefill_chunk < 1) fail(ErrorKind::invalid_input, "the prefill chunk must be positive");
    options_.max_step_tokens = std::min(options_.max_step_tokens, shape.step_tokens);
    if (options_.max_step_tokens < options_.max_sequences - 1 + options_.prefill_chunk)
        fail(ErrorKind::invalid_input,
             "a step of {} tokens cannot hold a decode token for {} sequences beside a prompt chunk of {}",
             options_.max_step_tokens, options_.max_sequences, options_.prefill_chunk);
    slots_.resize(size_t(options_.max_sequences));
    for (auto& s : slots_) s.generated.reserve(size_t(context_));
    entries_.reserve(slots_.size());
    entry_slot_.reserve(slots_.size());
    prefill_order_.reserve(slots_.size());
    logits_.resize(slots_.size() * size_t(vocab_));
}

void BatchScheduler::add(ScheduledRequest request) {
    if (request.prompt.empty()) fail(ErrorKind::invalid_input, "request {}: empty prompt", request.id);
    if (int64_t(request.prompt.size()) + request.max_new_tokens > context_)
        fail(ErrorKind::invalid_input, "request {}: {} prompt + {} new tokens exceed the context of {}", request.id,
             request.prompt.size(), request.max_new_tokens, context_);
    pending_.push_back(std::move(request));
    if (options_.order != RequestOrder::fifo) pending_sorted_ = false;
}

int BatchScheduler::n_decoding() const {
    int n = 0;
    for (const Slot& s : slots_) n += s.active && s.prompt_done >= int64_t(s.request.prompt.size());
    return n;
}

void BatchScheduler::admit(ScheduledStep& plan) {
    if (!pending_sorted_) {
        // Once per batch of adds (sluice batch adds its whole job before the first step); stable,
        // so equal max_new_tokens keep the order they were added in.
        std::stable_sort(pending_.begin(), pending_.end(), [](const ScheduledRequest& a, const ScheduledRequest& b) {
            return a.max_new_tokens > b.max_new_tokens;
        });
        pending_sorted_ = true;
    }
    for (int s = 0; s < int(slots_.size()) && !pending_.empty(); ++s) {
        Slot& slot = slots_[size_t(s)];
        if (slot.active) continue;
        slot.request = std::move(pending_.front());
        pending_.pop_front();
        forward_.truncate(0, s);
        slot.active = true;
        slot.prompt_done = 0;
        slot.order = admitted_++;
        slot.generated.clear();
        slot.sampler.emplace(slot.request.sampler, vocab_, scratch_);
        ++n_active_;
        ++plan.n_admitted;
    }
}

void BatchScheduler::finish(int s, FinishReason reason) {
    Slot& slot = slots_[size_t(s)];
    on_finish_(slot.request.id, slot.generated, reason);
    slot.active = false;
    // The prompt's memory goes with the request (a server's slots see many).
    std::vector<int32_t>().swap(slot.request.prompt);
    --n_active_;
}

bool BatchScheduler::cancel(int64_t id) {
    for (int s = 0; s < int(slots_.size()); ++s)
        if (slots_[size_t(s)].active && slots_[size_t(s)].request.id == id) {
            finish(s, FinishReason::cancelled);
            return true;
        }
    const auto it = std::find_if(pending_.begin(), pending_.end(), [&](const ScheduledRequest& r) { return r.id == id; });
    if (it == pending_.end()) return false;
    pending_.erase(it);
    on_finish_(id, {}, FinishReason::cancelled);
    return true;
}

int BatchScheduler::cancel_running() {
    int n = 0;
    for (int s = 0; s < int(slots_.size()); ++s)
        if (slots_[size_t(s)].active) {
            finish(s, FinishReason::cancelled);
            ++n;
        }
    return n;
}

ScheduledStep BatchScheduler::step(int64_t target_tokens) {
    ScheduledStep plan;
    admit(plan);
    plan.target_tokens = std::clamp(target_tokens, options_.prefill_chunk, options_.max_step_tokens);
    entries_.clear();
    entry_slot_.clear();
    int64_t tokens = 0;
    // Every decoding sequence feeds its last token.
    for (int s = 0; s < int(slots_.size()); ++s) {
        Slot& slot = slots_[size_t(s)];
        if (!slot.active || slot.prompt_done < int64_t(slot.request.prompt.size())) continue;
        entries_.push_back({s, {&slot.next, 1}, false, false});
        entry_slot_.push_back(s);
        ++tokens;
        ++plan.n_decode;
        plan.n_positions += forward_.position(s) + 1;
    }
    // Then prompt chunks while the step has room (at least one chunk): earliest admitted first, or
    // in longest_output_first, the most max_new_tokens first (then earliest admitted).
    prefill_order_.clear();
    for (int s = 0; s < int(slots_.size()); ++s)
        if (slots_[size_t(s)].active && slots_[size_t(s)].prompt_done < int64_t(slots_[size_t(s)].request.prompt.size()))
            prefill_order_.push_back(s);
    const bool longest_first = options_.order == RequestOrder::longest_output_first;
    std::sort(prefill_order_.begin(), prefill_order_.end(), [&](int a, int b) {
        const Slot& x = slots_[size_t(a)];
        const Slot& y = slots_[size_t(b)];
        if (longest_first && x.request.max_new_tokens != y.request.max_new_tokens)
            return x.request.max_new_tokens > y.request.max_new_tokens;
        return x.order < y.order;
    });
    for (int s : prefill_order_) {
        Slot& slot = slots_[size_t(s)];
        const auto& prompt = slot.request.prompt;
        const int64_t count = std::min(options_.prefill_chunk, int64_t(prompt.size()) - slot.prompt_done);
        // A chunk that does not fit leaves its room to later, shorter ones (first fit): chunks are
        // whole (their boundaries must not depend on the batch), and prompts of 64-128 tokens left
        // steps up to a chunk short of their target. The first in order always fits or goes first.
        if (plan.n_prefill > 0 && tokens + count > plan.target_tokens) continue;
        if (tokens + count > options_.max_step_tokens) continue;
        const bool last = slot.prompt_done + count == int64_t(prompt.size());
        entries_.push_back({s, std::span<const int32_t>(prompt).subspan(size_t(slot.prompt_done), size_t(count)), false,
                            !last});
        entry_slot_.push_back(s);
        tokens += count;
        plan.n_prefill += count;
        plan.n_positions += slot.prompt_done + count;
    }
    plan.n_sequences = int(entries_.size());
    if (entries_.empty()) return plan;

    // About what the next step will carry, for reads the weights may start before it: a token for
    // every sequence decoding then, and the prompt positions still to run (capped at a step). Each
    // running sequence counts what it has left before this step (1 when decoding), less this step's
    // prompt positions, plus a token for each prompt this step ends (its entry asks for logits).
    int64_t next_tokens = -plan.n_prefill - plan.n_decode;
    for (const ScheduledRequest& r : pending_) next_tokens += int64_t(r.prompt.size());
    for (const Slot& slot : slots_)
        if (slot.active) next_tokens += std::max<int64_t>(int64_t(slot.request.prompt.size()) - slot.prompt_done, 1);
    for (const SequenceTokens& e : entries_) next_tokens += !e.no_logits;
    forward_.expect_next_step(std::min(next_tokens, options_.max_step_tokens));

    forward_.forward_batch(entries_, logits_.data());

    // Logits rows come in batch order, one per entry that asked for them.
    size_t row = 0;
    for (size_t e = 0; e < entries_.size(); ++e) {
        const int s = entry_slot_[e];
        Slot& slot = slots_[size_t(s)];
        if (entries_[e].no_logits) {
            slot.prompt_done += int64_t(entries_[e].tokens.size());
            continue;
        }
        const float* logits = logits_.data() + row++ * size_t(vocab_);
        if (slot.prompt_done < int64_t(slot.request.prompt.size())) slot.prompt_done += int64_t(entries_[e].tokens.size());
        const int32_t token = slot.sampler->sample(logits);
        const bool eos = token == forward_.layout().eos_id && slot.request.stop_at_eos;
        if (!eos) slot.generated.push_back(token);
        slot.next = token;
        const bool stopped = eos || on_token_(slot.request.id, token);
        const bool full = int64_t(slot.generated.size()) >= slot.request.max_new_tokens;
        if (stopped || full) {
            finish(s, stopped ? FinishReason::stop : FinishReason::length);
            ++plan.n_finished;
        }
    }
    return plan;
}

}  // namespace sluice
