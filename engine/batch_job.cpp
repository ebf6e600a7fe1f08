#include "engine/batch_job.hpp"

#include <fmt/format.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <csignal>
#include <functional>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/batch_memory.hpp"
#include "engine/batch_progress.hpp"
#include "engine/batch_results.hpp"
#include "engine/batch_scheduler.hpp"
#include "engine/step_sizer.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/spilled_latent_cache.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/openai_prompt.hpp"
#include "formats/openai_batch.hpp"
#include "formats/tokenizer.hpp"

namespace sluice {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// SIGINT / SIGTERM ask the job to stop after the current step; a second one kills at once
// (SA_RESETHAND puts the default action back).
void install_stop_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

// One non-blank input line: the request it asks for, or why it cannot be served.
struct InputLine {
    int64_t line = 0;
    uint64_t offset = 0, length = 0;  // its bytes in the file (the prompt is read again from there)
    std::string record_id;
    std::optional<BatchRequest> request;
    std::optional<BatchLineError> error;
    const std::string& custom_id() const { return request ? request->custom_id : error->custom_id; }
};

// Every line of the input in order. The first line with a custom_id owns it: a later one gets a
// duplicate_custom_id error with an id of its own (from its line), as do lines with no custom_id.
// `visit` sees each line as it is read, before the next is parsed (sluice batch checks it and drops
// its prompt there, so that no more than one prompt is held at a time).
std::vector<InputLine> read_input(const std::string& path, const std::function<void(InputLine&)>& visit = {}) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(ErrorKind::io, "{}: cannot open the batch input", path);
    std::vector<InputLine> lines;
    std::unordered_map<std::string, int64_t> first_line;
    std::string text;
    uint64_t offset = 0;
    for (int64_t n = 1; std::getline(in, text); ++n) {
        const uint64_t at = offset;
        offset += text.size() + 1;
        ParsedBatchLine parsed = parse_batch_line(text, n);
        if (!parsed.request && !parsed.error) continue;
        InputLine l{n, at, text.size(), "", std::move(parsed.request), std::move(parsed.error)};
        const std::string& id = l.custom_id();
        if (id.empty()) {
            l.record_id = batch_line_record_id(n, text);
        } else if (const auto [it, fresh] = first_line.emplace(id, n); !fresh) {
            l.error = batch_line_error(n, id, "duplicate_custom_id", "custom_id",
                                       fmt::format("custom_id '{}' was already used on line {}", id, it->second));
            l.request.reset();
            l.record_id = batch_line_record_id(n, text);
        } else {
            l.record_id = batch_request_record_id(id);
        }
        if (visit) visit(l);
        lines.push_back(std::move(l));
    }
    return lines;
}

// Lines without a custom_id are reported by shard 0.
bool in_shard(const InputLine& l, int index, int count) {
    if (count <= 1) return true;
    if (l.custom_id().empty()) return index == 0;
    return int(batch_custom_id_hash(l.custom_id()) % uint64_t(count)) == index;
}

// A request checked and counted; its prompt's tokens are made again when it is about to start.
struct PreparedRequest {
    const InputLine* input = nullptr;
    int64_t prompt_tokens = 0;
    int64_t max_tokens = 0;
    // Text generated so far (special tokens skipped) and where a stop sequence cut it.
    std::string text;
    size_t stop_at = std::string::npos;
};

// Once a line is tokenized (or done, or an error record, or another shard's), its text is not
// needed again: what the job keeps of it is its options. A job holds every line of its input from
// start to end, so kept, the text would stay beside the tokens for the whole job (about 2.4 KB a
// request for 600-token prompts: 2.4 GB for a million).
void drop_prompt_text(InputLine& l) {
    if (!l.request) return;
    std::vector<ChatMessage>().swap(l.request->messages);
    std::string().swap(l.request->prompt);
    std::vector<int32_t>().swap(l.request->prompt_ids);
}

int64_t created_seconds() {
    // SOURCE_DATE_EPOCH (reproducible-builds.org) pins the timestamps, so two runs of a job can be
    // compared byte for byte.
    if (const char* e = std::getenv("SOURCE_DATE_EPOCH")) return std::strtoll(e, nullptr, 10);
    return int64_t(std::time(nullptr));
}

}  // namespace

std::pair<int, int> parse_shard(const std::string& text) {
    const size_t slash = text.find('/');
    int i = -1, n = 0;
    try {
        if (slash != std::string::npos) {
            size_t used = 0;
            i = std::stoi(text.substr(0, slash), &used);
            if (used != slash) i = -1;
            n = std::stoi(text.substr(slash + 1), &used);
            if (used != text.size() - slash - 1) n = 0;
        }
    } catch (const std::exception&) {
        n = 0;
    }
    if (n < 1 || i < 0 || i >= n) fail(ErrorKind::invalid_input, "--shard '{}': expected i/N with 0 <= i < N", text);
    return {i, n};
}

int run_batch_job(const BatchJobOptions& o) {
    // From the start: a signal while the model loads ends the job before its first step.
    g_stop_signal = 0;
    install_stop_handlers();
    BatchResultsFile results(o.output);
    if (results.dropped_bytes() > 0)
        fmt::print(stderr, "batch: {}: dropped a torn last line ({} bytes) left by an interrupted write\n", o.output,
                   results.dropped_bytes());
    // The model's header, tokenizer and chat template (no weights yet); the runtime takes it over.
    std::unique_ptr<OpenModel> model = open_model(o.model);
    if (!model->tokenizer) fail(ErrorKind::invalid_input, "{}: the model has no tokenizer; sluice batch needs one", o.model);
    const std::string model_name = std::filesystem::path(o.model).lexically_normal().filename().string();

    // Each line is checked as it is read (this shard's? done before? can it run, with how many
    // prompt tokens?) and its prompt dropped: it is read again when the request starts.
    struct LineCheck {
        bool mine = false, done_before = false;
        std::string error_record;  // not empty: the record to write instead of running it
        int64_t prompt_tokens = 0, max_tokens = 0;
    };
    std::vector<LineCheck> checks;
    std::vector<InputLine> input = read_input(o.input, [&](InputLine& l) {
        LineCheck c;
        c.mine = in_shard(l, o.shard_index, o.shard_count);
        if (!c.mine) {
            // another shard's: nothing to check
        } else if (results.done(l.record_id)) {
            c.done_before = true;
        } else if (l.error) {
            c.error_record = batch_error_line(l.record_id, *l.error);
        } else {
            OpenAIPrompt prompt;
            if (const auto why = prepare_openai_prompt(*l.request, *model, o.context, prompt)) {
                c.error_record = batch_error_line(
                    l.record_id, batch_line_error(l.line, l.request->custom_id, why->code, why->param, why->message));
            } else {
                c.prompt_tokens = int64_t(prompt.ids.size());
                c.max_tokens = prompt.max_tokens;
            }
        }
        drop_prompt_text(l);
        checks.push_back(std::move(c));
    });

    // Requests left to run, and error records not yet written (durable before anything runs).
    std::vector<InputLine*> mine;
    std::vector<PreparedRequest> todo;
    std::vector<std::string> error_lines;
    int64_t done_before = 0;
    for (size_t i = 0; i < input.size(); ++i) {
        LineCheck& c = checks[i];
        if (!c.mine) continue;
        mine.push_back(&input[i]);
        if (c.done_before) {
            ++done_before;
        } else if (!c.error_record.empty()) {
            error_lines.push_back(std::move(c.error_record));
        } else {
            PreparedRequest p;
            p.input = &input[i];
            p.prompt_tokens = c.prompt_tokens;
            p.max_tokens = c.max_tokens;
            todo.push_back(std::move(p));
        }
    }
    std::vector<LineCheck>().swap(checks);
    results.append(error_lines);
#if defined(__GLIBC__)
    // Parsing every line left its JSON trees' memory free in the heap, where it stays in the
    // process's RSS, which the memory planner counts as held: handed back before the plan.
    malloc_trim(0);
#endif
    fmt::print(stderr, "batch: {} requests{}: {} done before, {} error records, {} to run\n", mine.size(),
               o.shard_count > 1 ? fmt::format(" in shard {}/{}", o.shard_index, o.shard_count) : "", done_before,
               error_lines.size(), todo.size());

    std::vector<std::string> order;  // record ids of this shard in input order
    for (const InputLine* l : mine) order.push_back(l->record_id);
    auto finish_file = [&] {
        if (results.n_done() < order.size()) return;
        try {
            results.rewrite_in_order(order);
        } catch (const Error& e) {
            fail(e.kind(), "{} (every record is in {}, not yet in input order: run the same command again to order them)",
                 e.what(), o.output);
        }
    };
    if (todo.empty()) {
        finish_file();
        fmt::print(stderr, "batch: nothing left to run; {} holds every record\n", o.output);
        return 0;
    }

    // Plan what runs: every request's positions fit one latent cache slot.
    int64_t capacity = 1;
    for (const auto& p : todo) capacity = std::max(capacity, p.prompt_tokens + p.max_tokens);
    const int max_sequences = int(std::min<int64_t>(o.max_sequences, int64_t(todo.size())));
    // A batch step is filled to the first of these caps that fits the budget (below).
    const std::vector<int64_t> step_choices = batch_step_choices(o.max_step_tokens, max_sequences, o.prefill_chunk);
    ThreadPool pool(o.threads);
    RuntimeOptions ro = o.runtime;
    ro.n_threads = pool.size();
    // The planning of this job in one place (issue 14's shared planner takes it over): sequences x
    // positions x tokens per step, and where the latent caches live. --cache-ram says where; by
    // default they stay in memory while they fit, and spill to disk when they do not (CPU only).
    std::vector<LatentCachePlan> cache_choices;
    if (o.cache_ram_bytes > 0) {
        cache_choices = {plan_latent_cache(model->layout, max_sequences, capacity, o.cache_ram_bytes)};
    } else {
        cache_choices = {LatentCachePlan{model->layout.n_layers, 0}};
        if (!resolve_device(ro.device).cuda)
            cache_choices.push_back(spill_all_latent_caches(model->layout, max_sequences, capacity));
    }
    // The logits the job keeps: a row per sequence, and two rows of the sampler's scratch.
    auto shape_for = [&](int64_t tokens) {
        return RunShape{max_sequences, capacity, tokens, int64_t(max_sequences) + 2};
    };
    // The first (step, caches) that fits the budget, tried on the planner alone (the runtime is made
    // once): the larger step first, whether the caches stay in memory or spill (the job's 512
    // sequences fitted in memory at 768-token steps, leaving the expert pool 16 buffers and the dense
    // parts streamed, against 153 buffers spilled at 1,024); engine/batch_memory.hpp.
    const BatchMemoryChoice chosen = choose_batch_memory(
        model->plan, model->layout.n_layers, step_choices, cache_choices, [&](const LatentCachePlan& c, int64_t tokens) {
            RuntimeOptions trial = ro;
            trial.cache_resident_layers = c.resident_layers;
            trial.cache_spill_buffer_bytes = c.buffer_bytes;
            trial.shapes = {shape_for(tokens)};
            return plan_runtime_memory(*model, trial);
        });
    const LatentCachePlan cache_plan = chosen.caches;
    int64_t step_tokens = chosen.step_tokens;
    const std::string& spill_reason = chosen.spill_reason;
    if (step_tokens != step_choices.front())
        fmt::print(stderr, "batch: steps of {} tokens do not fit the memory budget; planning steps of {}\n",
                   step_choices.front(), step_tokens);
    const bool spill = cache_plan.resident_layers < model->layout.n_layers;
    if (spill && !spill_reason.empty())
        fmt::print(stderr, "batch: the latent caches of {} sequences x {} positions spill to disk: {} (--cache-ram "
                   "sets how much stays in memory)\n", max_sequences, capacity, spill_reason);
    else if (spill && o.cache_ram_bytes == 0)
        fmt::print(stderr, "batch: the latent caches of {} sequences x {} positions ({:.2f} GiB) do not fit the memory "
                   "budget beside steps of {} tokens and the model's least: they spill to disk (--cache-ram sets how "
                   "much stays in memory; fewer --max-seqs keeps them all there)\n",
                   max_sequences, capacity,
                   double(SpilledLatentCache::slot_bytes(model->layout, capacity)) * max_sequences *
                       model->layout.n_layers / (1 << 30),
                   step_tokens);
    ro.cache_resident_layers = cache_plan.resident_layers;
    ro.cache_spill_buffer_bytes = cache_plan.buffer_bytes;
    std::unique_ptr<Runtime> rt;
    for (;;) {
        ro.shapes = {shape_for(step_tokens)};
        try {
            // The model opened above, not a second copy of its tokenizer held beside it for the
            // whole job (opened again only if a try that took it failed).
            rt = make_runtime(model ? std::move(model) : open_model(o.model), ro);
            break;
        } catch (const Error& e) {
            // The host plan fitted (above); a device's may not, at the larger step.
            if (e.kind() != ErrorKind::out_of_memory || step_tokens == step_choices.back()) throw;
            fmt::print(stderr, "batch: steps of {} tokens do not fit the device; planning steps of {}\n", step_tokens,
                       step_choices.back());
            step_tokens = step_choices.back();
        }
    }
    const RunShape shape = ro.shapes.front();
    const auto& layout = rt->layout();
    const OpenModel& opened = *rt->model;

    std::unique_ptr<CpuBackend> backend;  // the spilled cache's and its forward's (CPU only)
    std::unique_ptr<SpilledLatentCache> spilled;
    if (spill) {
        if (rt->backend)
            fail(ErrorKind::unsupported, "batch: latent caches spilled to disk (--cache-ram) run on the CPU; use --device cpu");
        backend = std::make_unique<CpuBackend>(pool);
        SpillOptions sp;
        const std::filesystem::path dir =
            o.spill_dir.empty() ? std::filesystem::absolute(o.output).parent_path() : std::filesystem::path(o.spill_dir);
        sp.path = (dir / fmt::format(".sluice-spill-{}.bin", ::getpid())).string();
        sp.resident_layers = cache_plan.resident_layers;
        sp.buffer_bytes = cache_plan.buffer_bytes;
        sp.reader.backend = io::parse_backend(ro.io_backend);
        spilled = std::make_unique<SpilledLatentCache>(layout, max_sequences, capacity, *backend, sp);
        fmt::print(stderr, "batch: latent caches of layers {}..{} spill to {} ({:.2f} GiB), through a {:.0f} MiB buffer\n",
                   cache_plan.resident_layers, layout.n_layers - 1, sp.path, double(rt->memory.mla_spilled_bytes) / (1 << 30),
                   double(cache_plan.buffer_bytes) / (1 << 20));
    }
    ForwardOptions fo{shape, ro.attention};
    fo.latent_cache = spilled.get();
    const auto forward_owner = backend ? std::make_unique<DeepseekForward>(layout, rt->weights(), fo, *backend)
                                       : rt->make_forward(fo, pool);
    DeepseekForward& forward = *forward_owner;

    // Finished records of the current step, appended (durably) when it ends.
    std::vector<std::string> finished;
    int64_t output_tokens = 0, prompt_tokens = 0;
    // For the progress line: tokens generated so far, prompt tokens computed, output budget left
    // unused by requests that stopped before max_tokens.
    int64_t generated = 0, prefilled = 0, unused_budget = 0;
    const Tokenizer& tok = *opened.tokenizer;
    auto on_token = [&](int64_t id, int32_t token) {
        ++generated;
        PreparedRequest& p = todo[size_t(id)];
        const auto& stops = p.input->request->stop;
        if (stops.empty() || tok.is_special(token)) {
            if (!tok.is_special(token)) p.text += tok.token_bytes(token);
            return false;
        }
        const size_t before = p.text.size();
        p.text += tok.token_bytes(token);
        for (const auto& s : stops) {
            // Only a match ending in the new bytes is new.
            const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
            const size_t at = p.text.find(s, from);
            if (at != std::string::npos) p.stop_at = std::min(p.stop_at, at);
        }
        return p.stop_at != std::string::npos;
    };
    auto on_finish = [&](int64_t id, std::span<const int32_t> tokens, FinishReason reason) {
        PreparedRequest& p = todo[size_t(id)];
        BatchCompletion c;
        c.record_id = p.input->record_id;
        c.custom_id = p.input->request->custom_id;
        c.endpoint = p.input->request->endpoint;
        c.model = model_name;
        c.text = utf8_lossy(std::string_view(p.text).substr(0, p.stop_at));
        c.finish_reason = finish_reason_name(reason);
        c.prompt_tokens = p.prompt_tokens;
        c.completion_tokens = int64_t(tokens.size());
        c.created = created_seconds();
        finished.push_back(batch_success_line(c));
        output_tokens += c.completion_tokens;
        prompt_tokens += c.prompt_tokens;
        unused_budget += std::max<int64_t>(0, p.max_tokens - c.completion_tokens);
        std::string().swap(p.text);
    };
    SchedulerOptions so;
    so.max_sequences = max_sequences;
    so.prefill_chunk = o.prefill_chunk;
    so.max_step_tokens = step_tokens;
    // Every request is known: long decodes start first, short prompts fill the steps beside them
    // (results do not depend on the order; the file is rewritten in input order at the end).
    so.order = RequestOrder::longest_output_first;
    BatchScheduler scheduler(forward, so, on_token, on_finish);
    // Requests reach the scheduler a few at a time, longest max_tokens first (the order it would
    // put them in), each prompt read and tokenized again just before: held for the whole job, the
    // prompts' tokens were most of a job's memory per request (2 KB for 512-token prompts).
    std::vector<size_t> feed(todo.size());
    for (size_t i = 0; i < feed.size(); ++i) feed[i] = i;
    std::stable_sort(feed.begin(), feed.end(), [&](size_t a, size_t b) { return todo[a].max_tokens > todo[b].max_tokens; });
    size_t fed = 0;
    std::ifstream reread(o.input, std::ios::binary);
    std::string line_text;
    auto feed_one = [&](size_t i) {
        const InputLine& l = *todo[i].input;
        line_text.resize(size_t(l.length));
        if (!reread || !reread.seekg(std::streamoff(l.offset)) || !reread.read(line_text.data(), std::streamsize(l.length))) {
            // A file that ended before the line was cut or rewritten under the job (an editor
            // truncates, then writes): the same case as a changed line, not a failing disk. The
            // read's own end of file says so (a size taken after it could see the file grown again).
            if (reread.eof())
                fail(ErrorKind::invalid_input,
                     "{}: line {} changed while the job ran (the file ended at byte {}, before it); its finished "
                     "requests are in {}: run the job again on the file as it is now",
                     o.input, l.line, l.offset + int64_t(reread.gcount()), o.output);
            fail(ErrorKind::io, "{}: cannot read line {} again (at byte {})", o.input, l.line, l.offset);
        }
        ParsedBatchLine parsed = parse_batch_line(line_text, l.line);
        OpenAIPrompt prompt;
        if (!parsed.request || parsed.request->custom_id != l.request->custom_id ||
            prepare_openai_prompt(*parsed.request, opened, o.context, prompt) ||
            int64_t(prompt.ids.size()) != todo[i].prompt_tokens)
            fail(ErrorKind::invalid_input,
                 "{}: line {} changed while the job ran; its finished requests are in {}: run the job again on the "
                 "file as it is now",
                 o.input, l.line, o.output);
        const BatchRequest& r = *l.request;
        ScheduledRequest s;
        s.id = int64_t(i);
        s.prompt = std::move(prompt.ids);
        s.max_new_tokens = todo[i].max_tokens;
        // Without a seed, one from the custom_id: a resumed job samples what the first run would have.
        const uint64_t seed = r.seed ? uint64_t(*r.seed) : batch_custom_id_hash(r.custom_id);
        s.sampler = {float(r.temperature), 0, float(r.top_p), seed, int64_t(tok.n_vocab())};
        s.stop_at_eos = !r.ignore_eos;
        scheduler.add(std::move(s));
    };
    // Enough waiting to fill every slot that frees at the next step.
    auto top_up = [&] {
        while (fed < feed.size() && scheduler.n_pending() < size_t(max_sequences)) feed_one(feed[fed++]);
    };
    StepSizer sizer(o.prefill_chunk, step_tokens);

    std::FILE* stats = nullptr;
    if (!o.stats_json.empty()) {
        stats = std::fopen(o.stats_json.c_str(), "a");
        if (!stats) fail(ErrorKind::io, "{}: cannot open for --stats-json", o.stats_json);
    }
    const bool terminal = o.progress_terminal >= 0 ? o.progress_terminal > 0 : ::isatty(STDERR_FILENO) == 1;
    BatchProgress progress(done_before + int64_t(error_lines.size()), o.progress_interval_seconds, terminal);
    BatchProgressFigures fig;
    fig.total = int64_t(mine.size());
    fig.done = int64_t(results.n_done());
    for (const auto& p : todo) fig.work_total += p.prompt_tokens + p.max_tokens;
    StepStats io_total;
    int64_t n_steps = 0, step_sequences = 0, step_tokens_sum = 0;
    using Clock = std::chrono::steady_clock;
    while ((fed < feed.size() || !scheduler.idle()) && g_stop_signal == 0) {
        top_up();  // before the clock starts: tokenizing the next prompts is not the step's time
        const auto t0 = Clock::now();
        const size_t streamer_steps = rt->streamer ? rt->streamer->steps().size() : 0;
        const uint64_t spill_read0 = spilled ? spilled->bytes_read() : 0, spill_written0 = spilled ? spilled->bytes_written() : 0;
        const double spill_wait0 = spilled ? spilled->read_wait_seconds() : 0, spill_write0 = spilled ? spilled->write_seconds() : 0;
        // Every step as full as the cap and the waiting prompts allow, not just roofline-balanced
        // (what sluice serve aims at, for latency): past the balance point a step's reads are
        // hidden and each token costs its GEMMs alone, while at it reading and computing stall
        // each other (a 490-token step: 11.2 s for a 10.3 s read and 8.8 s of compute). A job
        // has no latency to keep. The balanced size goes in --stats-json beside it.
        const int64_t balanced_tokens = sizer.target(scheduler.n_decoding());
        const ScheduledStep plan = scheduler.step(step_tokens);
        results.append(finished);
        finished.clear();
        const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        StepStats io;
        if (rt->streamer)
            for (size_t i = streamer_steps; i < rt->streamer->steps().size(); ++i) io += rt->streamer->steps()[i];
        io_total += io;
        const uint64_t spill_read = spilled ? spilled->bytes_read() - spill_read0 : 0;
        const uint64_t spill_written = spilled ? spilled->bytes_written() - spill_written0 : 0;
        sizer.observe(plan.n_decode, plan.n_prefill, rt->streamer ? io.read_seconds : 0.0, rt->streamer ? io.compute_seconds : seconds);
        ++n_steps;
        step_sequences += plan.n_sequences;
        step_tokens_sum += plan.n_tokens();
        fig.done = int64_t(results.n_done());
        prefilled += plan.n_prefill;
        fig.output_tokens = generated;
        fig.work_done = prefilled + generated + unused_budget;
        fig.bytes_read = io_total.bytes_read + (spilled ? spilled->bytes_read() : 0);
        fig.experts_needed = io_total.experts_needed;
        fig.experts_in_memory = io_total.cache_hits + io_total.prefetch_hits;
        progress.update(fig);
        if (stats) {
            nlohmann::json j = {{"step", n_steps},           {"seconds", seconds},
                                {"sequences", plan.n_sequences}, {"decode_tokens", plan.n_decode},
                                {"prefill_tokens", plan.n_prefill}, {"target_tokens", plan.target_tokens},
                                {"balanced_tokens", balanced_tokens},
                                {"positions", plan.n_positions}, {"admitted", plan.n_admitted},
                                {"finished", plan.n_finished}, {"done", fig.done},
                                {"spill_bytes_read", spill_read}, {"spill_bytes_written", spill_written},
                                {"streaming", io.to_json()}};
            // Time blocked on the spilled caches (inside the streamer's compute_s): reads not yet
            // landed when attention asked, and write-backs still holding buffer space or the step's end.
            if (spilled)
                j["spill_wait_s"] = {{"read", spilled->read_wait_seconds() - spill_wait0},
                                     {"write", spilled->write_seconds() - spill_write0}};
            // The cost model the next step's target came from (absent while the proportional rule holds).
            if (const auto& m = sizer.model())
                j["cost_model"] = {{"fixed_s", m->fixed_s}, {"per_decode_s", m->per_decode_s},
                                   {"per_prompt_s", m->per_prompt_s}};
            std::fprintf(stats, "%s\n", j.dump().c_str());
            std::fflush(stats);
        }
    }
    const double elapsed = progress.elapsed_seconds();
    if (stats) {
        nlohmann::json j = {
            {"summary",
             {{"requests", fig.total},
              {"done", fig.done},
              {"complete", fed == feed.size() && scheduler.idle()},
              {"seconds", elapsed},
              {"steps", n_steps},
              {"output_tokens", output_tokens},
              {"prompt_tokens", prompt_tokens},
              {"output_tokens_per_s", elapsed > 0 ? double(output_tokens) / elapsed : 0.0},
              {"bytes_read", io_total.bytes_read},
              {"gb_read_per_output_token",  // weights and spilled caches
               output_tokens ? double(fig.bytes_read) / 1e9 / double(output_tokens) : 0.0},
              {"max_sequences", max_sequences},
              {"mean_sequences_per_step", n_steps ? double(step_sequences) / double(n_steps) : 0.0},
              {"mean_tokens_per_step", n_steps ? double(step_tokens_sum) / double(n_steps) : 0.0},
              {"prefill_chunk", o.prefill_chunk},
              {"max_step_tokens", step_tokens},
              {"context", capacity},
              {"threads", pool.size()},
              {"memory_plan", rt->memory.describe()},
              {"cache_resident_layers", cache_plan.resident_layers},
              {"spill_bytes_read", spilled ? spilled->bytes_read() : 0},
              {"spill_bytes_written", spilled ? spilled->bytes_written() : 0},
              {"spill_wait_s", {{"read", spilled ? spilled->read_wait_seconds() : 0.0},
                                {"write", spilled ? spilled->write_seconds() : 0.0}}},
              {"streaming", io_total.to_json()}}}};
        std::fprintf(stats, "%s\n", j.dump().c_str());
        std::fclose(stats);
    }
    // --trace: the timeline of every step this job ran, interrupted or not.
    rt->finish();
    if (g_stop_signal != 0) {
        const int sig = g_stop_signal;
        progress.finish(fig, "interrupted");
        fmt::print(stderr,
                   "batch: stopped by signal {} after the step in progress; {} of {} requests are in {}. Run the same "
                   "command again to resume (finished requests are skipped).\n",
                   sig, fig.done, fig.total, o.output);
        return 128 + sig;
    }
    finish_file();
    progress.finish(fig, "done");
    return 0;
}

BatchMergeReport merge_batch_outputs(const std::string& input, const std::vector<std::string>& parts,
                                     const std::string& output) {
    const std::vector<InputLine> lines = read_input(input);
    BatchMergeReport report;
    report.expected = int64_t(lines.size());
    std::unordered_map<std::string, std::string> records;
    std::unordered_set<std::string> expected;
    for (const auto& l : lines) expected.insert(l.record_id);
    for (const auto& part : parts) {
        std::ifstream in(part, std::ios::binary);
        if (!in) fail(ErrorKind::io, "{}: cannot open", part);
        std::string text;
        for (int64_t n = 1; std::getline(in, text); ++n) {
            if (text.empty()) continue;
            const auto key = parse_batch_record_key(text);
            if (!key) fail(ErrorKind::invalid_input, "{}: line {} is not a batch output record", part, n);
            if (!expected.count(key->id)) {
                report.unexpected.push_back(fmt::format("{} ({}:{})", key->id, part, n));
                continue;
            }
            if (!records.emplace(key->id, text).second) report.duplicated.push_back(fmt::format("{} ({}:{})", key->id, part, n));
        }
    }
    std::string out;
    for (const auto& l : lines) {
        const auto it = records.find(l.record_id);
        if (it == records.end()) {
            report.missing.push_back(l.custom_id().empty() ? fmt::format("line {}", l.line)
                                                           : fmt::format("line {} (custom_id '{}')", l.line, l.custom_id()));
            continue;
        }
        out += it->second;
        out += '\n';
        ++report.written;
    }
    // Checked and durable: a full disk is an error, never a short file reported as written.
    replace_file_durably(output, out);
    return report;
}

}  // namespace sluice
