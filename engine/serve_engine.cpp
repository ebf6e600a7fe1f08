#include "engine/serve_engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <exception>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/step_sizer.hpp"
#include "formats/tokenizer.hpp"

namespace sluice {

ServeRequest::Outbox ServeRequest::take(std::string& text) {
    std::lock_guard lock(mutex_);
    text += outbox_.text;
    outbox_.text.clear();
    woken_ = false;
    Outbox state;
    state.done = outbox_.done;
    state.reason = outbox_.reason;
    state.completion_tokens = outbox_.completion_tokens;
    state.error = outbox_.error;
    return state;
}

ServeEngine::ServeEngine(ServeEngineOptions options, const Tokenizer& tokenizer, std::function<void()> on_exit)
    : options_(std::move(options)), tokenizer_(tokenizer), on_exit_(std::move(on_exit)) {
    if (options_.max_sequences < 1) fail(ErrorKind::invalid_input, "--max-seqs must be at least 1");
    if (options_.max_queue < 0) fail(ErrorKind::invalid_input, "--max-queue cannot be negative");
    stats_.max_sequences = options_.max_sequences;
}

ServeEngine::~ServeEngine() {
    stop(ServeClock::now());
    join();
}

void ServeEngine::start() { thread_ = std::thread([this] { run(); }); }

void ServeEngine::join() {
    if (thread_.joinable()) thread_.join();
}

ServeEngine::Admission ServeEngine::submit(std::shared_ptr<ServeRequest> request) {
    std::lock_guard lock(inbox_mutex_);
    if (stopping_) return Admission::stopping;
    if (!ready_) return Admission::not_ready;
    if (in_system_.load() >= options_.max_sequences + options_.max_queue) return Admission::queue_full;
    ++in_system_;
    inbox_.push_back(std::move(request));
    inbox_cv_.notify_one();
    return Admission::accepted;
}

void ServeEngine::stop(ServeClock::time_point deadline) {
    std::lock_guard lock(inbox_mutex_);
    if (stopping_) {
        stop_deadline_ = std::min(stop_deadline_, deadline);
    } else {
        stopping_ = true;
        stop_deadline_ = deadline;
    }
    inbox_cv_.notify_one();
}

ServeEngineStats ServeEngine::stats() const {
    std::lock_guard lock(stats_mutex_);
    ServeEngineStats s = stats_;
    s.ready = ready_.load();
    // Tokens/s over the steps that ended in the last few seconds, from the first one's start to
    // now (so the gauges fall to 0 when the server goes idle).
    const auto now = ServeClock::now();
    ServeClock::time_point since = now;
    int64_t prompt = 0, output = 0;
    for (size_t i = 0; i < std::min(n_recent_, recent_.size()); ++i) {
        const RecentStep& r = recent_[(n_recent_ - 1 - i) % recent_.size()];
        if (std::chrono::duration<double>(now - r.end).count() > kRateWindowSeconds) break;
        prompt += r.prompt;
        output += r.output;
        since = r.begin;
    }
    const double seconds = std::chrono::duration<double>(now - since).count();
    s.prompt_tokens_per_s = seconds > 0 ? double(prompt) / seconds : 0;
    s.output_tokens_per_s = seconds > 0 ? double(output) / seconds : 0;
    return s;
}

int ServeEngine::retry_after_seconds() const {
    std::lock_guard lock(stats_mutex_);
    // About when a slot frees: a request's mean time spread over the slots, at least a second.
    const double queue = double(options_.max_queue + options_.max_sequences);
    return int(std::clamp(std::ceil(mean_request_seconds_ * queue / options_.max_sequences / 2), 1.0, 600.0));
}

void ServeEngine::run() {
    try {
        const int64_t step_tokens = options_.max_step_tokens > 0
                                        ? options_.max_step_tokens
                                        : least_step_tokens(options_.max_sequences, options_.prefill_chunk);
        ThreadPool pool(options_.threads);
        RuntimeOptions ro = options_.runtime;
        // A row of logits per sequence and two of the sampler's scratch stay with the caller.
        ro.shapes = {RunShape{options_.max_sequences, options_.context, step_tokens, int64_t(options_.max_sequences) + 2}};
        ro.n_threads = pool.size();
        options_.max_step_tokens = step_tokens;
        // A step a failed read cut short is stepped on with the same runtime (the streamer and
        // the device weights let go of that step's buffers at the next one), except with a latent
        // cache spilled to disk, whose step schedule is cut short with it: then the runtime is
        // made again, its weights reloaded (serve returns true).
        // While the disk stays unreadable that load fails too: it is tried again, a second later,
        // then two, four... up to 16 (requests meanwhile get 503 "loading"), 8 times in all.
        bool reloading = false;
        int failed_loads = 0;
        for (;;) {
            std::unique_ptr<Runtime> rt;
            try {
                rt = make_runtime(options_.model, ro);
            } catch (const Error& e) {
                if (!reloading || e.kind() != ErrorKind::io || ++failed_loads >= 8) throw;
                const int delay_s = 1 << std::min(failed_loads - 1, 4);
                fmt::print(stderr, "serve: loading the model failed: {}; trying again in {} s\n", e.what(), delay_s);
                std::unique_lock lock(inbox_mutex_);
                if (inbox_cv_.wait_for(lock, std::chrono::seconds(delay_s), [&] { return stopping_; })) break;
                continue;
            }
            failed_loads = 0;
            if (!serve(*rt, pool)) {
                rt->finish();  // --trace: written when the server stops
                break;
            }
            reloading = true;
            fmt::print(stderr, "serve: loading the model again after the failed read\n");
        }
    } catch (...) {
        failure_ = std::current_exception();
        std::lock_guard lock(inbox_mutex_);
        stopping_ = true;
    }
    ready_ = false;
    // Whatever is still queued will not run.
    std::vector<std::shared_ptr<ServeRequest>> left;
    {
        std::lock_guard lock(inbox_mutex_);
        left.swap(inbox_);
    }
    const FinishReason cancelled = FinishReason::cancelled;
    for (auto& r : left) publish(*r, "", &cancelled, 0);
    if (on_exit_) on_exit_();
}

void ServeEngine::publish(ServeRequest& r, const std::string& text, const FinishReason* finished, int64_t tokens,
                          const std::string& error) {
    bool wake = false;
    {
        std::lock_guard lock(r.mutex_);
        r.outbox_.text += text;
        if (finished) {
            r.outbox_.done = true;
            r.outbox_.reason = *finished;
            r.outbox_.completion_tokens = tokens;
            r.outbox_.error = error;
        }
        wake = !r.woken_;
        r.woken_ = true;
    }
    if (wake && r.wake) r.wake();
}

bool ServeEngine::serve(Runtime& rt, ThreadPool& pool) {
    const ForwardOptions fo{rt.memory.shape, options_.runtime.attention};
    const auto forward_owner = rt.make_forward(fo, pool);  // on the chosen --device
    DeepseekForward& forward = *forward_owner;

    // Requests by id, from submit to finish (waiting or running); touched by this thread only.
    std::unordered_map<int64_t, std::shared_ptr<ServeRequest>> running;
    running.reserve(size_t(options_.max_sequences + options_.max_queue) * 2);
    std::string text;  // scratch for one token's ready text
    text.reserve(256);
    int64_t step_output = 0;
    std::string step_error;  // set while the requests of a step that threw are withdrawn
    auto on_token = [&](int64_t id, int32_t token) {
        ServeRequest& r = *running.at(id);
        ++step_output;
        if (!r.first_token_seen) {
            r.first_token_seen = true;
            const double ttft = std::chrono::duration<double>(ServeClock::now() - r.arrived).count();
            std::lock_guard lock(stats_mutex_);
            stats_.observe_ttft(ttft);
        }
        const bool stopped = r.completion->push(token);
        text.clear();
        r.completion->take_ready(text);
        if (!text.empty() && !stopped) publish(r, text, nullptr, 0);
        return stopped;
    };
    auto on_finish = [&](int64_t id, std::span<const int32_t> tokens, FinishReason reason) {
        const auto it = running.find(id);
        ServeRequest& r = *it->second;
        text.clear();
        if (reason != FinishReason::cancelled) r.completion->take_rest(text);
        publish(r, text, &reason, int64_t(tokens.size()), step_error);
        const double seconds = std::chrono::duration<double>(ServeClock::now() - r.arrived).count();
        running.erase(it);
        --in_system_;
        std::lock_guard lock(stats_mutex_);
        (reason == FinishReason::stop     ? stats_.finished_stop
         : reason == FinishReason::length ? stats_.finished_length
         : step_error.empty()             ? stats_.cancelled
                                          : stats_.failed)++;
        mean_request_seconds_ += 0.1 * (seconds - mean_request_seconds_);
    };
    SchedulerOptions so;
    so.max_sequences = options_.max_sequences;
    so.prefill_chunk = options_.prefill_chunk;
    so.max_step_tokens = options_.max_step_tokens;
    BatchScheduler scheduler(forward, so, on_token, on_finish);
    StepSizer sizer(options_.prefill_chunk, options_.max_step_tokens);

    std::vector<std::shared_ptr<ServeRequest>> incoming;
    std::vector<int64_t> to_cancel;
    int64_t next_id = 0;
    // A step that throws anything but an I/O error ends the server; its clients hear of it first.
    struct CancelOnThrow {
        std::unordered_map<int64_t, std::shared_ptr<ServeRequest>>& running;
        ~CancelOnThrow() {
            if (std::uncaught_exceptions() == 0) return;
            const FinishReason cancelled = FinishReason::cancelled;
            for (auto& [id, r] : running) publish(*r, "", &cancelled, 0);
        }
    } cancel_on_throw{running};
    ready_ = true;
    fmt::print(stderr, "serve: ready: {} sequence slots of {} positions, steps of up to {} tokens\n",
               options_.max_sequences, options_.context, options_.max_step_tokens);
    for (;;) {
        bool stopping = false;
        ServeClock::time_point deadline;
        {
            std::unique_lock lock(inbox_mutex_);
            if (scheduler.idle())
                inbox_cv_.wait(lock, [&] { return !inbox_.empty() || stopping_; });
            incoming.swap(inbox_);
            stopping = stopping_;
            deadline = stop_deadline_;
        }
        for (auto& r : incoming) {
            const int64_t id = next_id++;
            r->completion.emplace(tokenizer_, r->stop);
            running.emplace(id, r);
            ScheduledRequest s;
            s.id = id;
            s.prompt = r->prompt;
            s.max_new_tokens = r->max_tokens;
            s.sampler = r->sampler;
            s.stop_at_eos = r->stop_at_eos;
            scheduler.add(std::move(s));
        }
        incoming.clear();
        // Clients gone, or the stop deadline passed: their slots go to the next requests.
        const bool past_deadline = stopping && ServeClock::now() >= deadline;
        to_cancel.clear();
        for (const auto& [id, r] : running)
            if (past_deadline || r->cancel.load(std::memory_order_relaxed)) to_cancel.push_back(id);
        for (int64_t id : to_cancel) scheduler.cancel(id);
        if (!to_cancel.empty() || scheduler.idle()) {
            std::lock_guard lock(stats_mutex_);
            stats_.active_sequences = scheduler.n_active();
            stats_.queued = int64_t(scheduler.n_pending());
        }
        if (scheduler.idle()) {
            if (stopping) break;
            continue;
        }

        const auto t0 = ServeClock::now();
        const size_t streamer_steps = rt.streamer ? rt.streamer->steps().size() : 0;
        step_output = 0;
        ScheduledStep plan;
        try {
            plan = scheduler.step(sizer.target(scheduler.n_decoding()));
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::io) throw;
            // A read that failed (a bad sector, a file system gone for a moment) fails the requests
            // that were running, with its message, not the server. Before, one failed read ended
            // the process and every client heard "the server shut down".
            const bool reload = rt.memory.mla_spilled_bytes > 0;
            if (reload) ready_ = false;  // before the clients hear: their next request finds the server loading
            step_error = e.what();
            const int n = scheduler.cancel_running();
            step_error.clear();
            if (!reload) {  // the waiting ones stay queued, and the next step reads on
                fmt::print(stderr, "serve: a step failed: {}; its {} running request(s) got the error, {} wait\n",
                           e.what(), n, scheduler.n_pending());
                std::lock_guard lock(stats_mutex_);
                stats_.active_sequences = 0;
                stats_.queued = int64_t(scheduler.n_pending());
                continue;
            }
            // The waiting ones go back to the inbox, ahead of newer ones, in the order they came.
            std::vector<std::pair<int64_t, std::shared_ptr<ServeRequest>>> waiting(running.begin(), running.end());
            std::sort(waiting.begin(), waiting.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
            {
                std::lock_guard lock(inbox_mutex_);
                std::vector<std::shared_ptr<ServeRequest>> back;
                for (auto& [id, r] : waiting) back.push_back(std::move(r));
                back.insert(back.end(), inbox_.begin(), inbox_.end());
                inbox_.swap(back);
            }
            running.clear();
            fmt::print(stderr, "serve: a step failed: {}; its {} running request(s) got the error, {} wait\n", e.what(),
                       n, waiting.size());
            std::lock_guard lock(stats_mutex_);
            stats_.active_sequences = 0;
            stats_.queued = int64_t(waiting.size());
            return true;
        }
        const auto t1 = ServeClock::now();
        const double seconds = std::chrono::duration<double>(t1 - t0).count();
        StepStats io;
        if (rt.streamer) {
            for (size_t i = streamer_steps; i < rt.streamer->steps().size(); ++i) io += rt.streamer->steps()[i];
            rt.streamer->clear_steps();
        }
        sizer.observe(plan.n_decode, plan.n_prefill, rt.streamer ? io.read_seconds : 0.0, rt.streamer ? io.compute_seconds : seconds);

        std::lock_guard lock(stats_mutex_);
        ServeEngineStats& s = stats_;
        s.active_sequences = scheduler.n_active();
        s.queued = int64_t(scheduler.n_pending());
        s.prompt_tokens += plan.n_prefill;
        s.output_tokens += step_output;
        ++s.steps;
        recent_[n_recent_++ % recent_.size()] = {t0, t1, plan.n_prefill, step_output};
        s.bytes_read += io.bytes_read;
        s.experts_needed += io.experts_needed;
        s.expert_cache_hits += io.cache_hits;
        s.expert_prefetch_hits += io.prefetch_hits;
        s.step_seconds += seconds;
        s.read_seconds += io.read_seconds;
        s.compute_seconds += rt.streamer ? io.compute_seconds : seconds;
        s.overlap_efficiency = s.step_seconds > 0 ? std::max(s.read_seconds, s.compute_seconds) / s.step_seconds : 0;
    }
    std::lock_guard lock(stats_mutex_);
    stats_.active_sequences = 0;
    stats_.queued = 0;
    return false;
}

}  // namespace sluice
