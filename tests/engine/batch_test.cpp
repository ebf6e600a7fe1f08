// sluice batch on a small synthetic DeepSeek-V3 GGUF (K-quant experts, the real tokenizer):
// the scheduler's greedy tokens equal each request run alone and seeded sampling is the same
// whatever the batch around a request; the results file drops a torn last line; and a job killed
// with SIGKILL at 24 random moments, restarted each time, ends with every request exactly once
// and the same bytes as an uninterrupted run.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/batch_job.hpp"
#include "engine/batch_memory.hpp"
#include "engine/batch_progress.hpp"
#include "engine/batch_results.hpp"
#include "engine/batch_scheduler.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/spilled_latent_cache.hpp"
#include "engine/model_loader.hpp"
#include "engine/synth.hpp"
#include "engine/synth_gguf.hpp"
#include "formats/openai_batch.hpp"
#include "tests/engine/k_quant_tiny.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

// A directory of this process's files, removed when the test program ends.
struct ScratchDir {
    fs::path path = fs::temp_directory_path() / fmt::format("sluice_batch_test_{}", getpid());
    ScratchDir() { fs::create_directories(path); }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

fs::path scratch_dir() {
    static const ScratchDir dir;
    return dir.path;
}

// tests/engine/k_quant_tiny.hpp's shapes, Q4_K experts, the real tokenizer.
const fs::path& tiny_model() {
    static const fs::path path = [] {
        const char* shared = std::getenv("SLUICE_SHARED");
        REQUIRE_MESSAGE(shared, "SLUICE_SHARED is not set");
        GgufSynthOptions o;
        o.config = k_quant_tiny();
        o.output_path = scratch_dir() / "tiny-q4k.gguf";
        o.expert_type = DType::Q4_K;
        o.dense_type = DType::Q6_K;
        o.embed_type = DType::Q4_K;
        o.head_type = DType::Q8_0;
        o.seed = 11;
        o.tokenizer_dir = fs::path(shared) / "models" / "deepseek-v3-tokenizer";
        o.chunk_bytes = 1 << 20;
        write_synthetic_gguf(o);
        return o.output_path;
    }();
    return path;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int64_t length) {
    std::uniform_int_distribution<int32_t> id(100, 120000);
    std::vector<int32_t> p(static_cast<size_t>(length));
    for (auto& t : p) t = id(rng);
    return p;
}

// n requests with prompts of 3..42 random ids and 4..20 new tokens, EOS ignored; every
// `sampled_every`-th one samples (temperature 0.9, top-p 0.95) with its own seed, the rest greedy.
std::vector<ScheduledRequest> random_requests(uint32_t seed, int n, int sampled_every) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int64_t> prompt_length(3, 42), new_tokens(4, 20);
    std::vector<ScheduledRequest> requests;
    for (int i = 0; i < n; ++i) {
        ScheduledRequest r;
        r.id = i;
        r.prompt = random_prompt(rng, prompt_length(rng));
        r.max_new_tokens = new_tokens(rng);
        r.stop_at_eos = false;
        if (i % sampled_every == 1) r.sampler = {0.9f, 0, 0.95f, uint64_t(seed) * 1000 + uint64_t(i), 0};
        requests.push_back(r);
    }
    return requests;
}

struct Outcome {
    std::vector<int32_t> tokens;
    FinishReason reason = FinishReason::length;
};

// Runs `requests` through a scheduler of `max_sequences` and returns each one's tokens by id.
// With `spill`, the caches of layers from spill->resident_layers on live in a spill file.
std::vector<Outcome> run(LoadedModel& m, const std::vector<ScheduledRequest>& requests, int max_sequences,
                         int64_t chunk, ThreadPool& pool, const SpillOptions* spill = nullptr) {
    ForwardOptions fo{RunShape{max_sequences, 96, 64}};
    CpuBackend backend(pool);
    std::unique_ptr<SpilledLatentCache> spilled;
    if (spill) spilled = std::make_unique<SpilledLatentCache>(m.layout(), max_sequences, fo.shape.positions, backend, *spill);
    fo.latent_cache = spilled.get();
    DeepseekForward forward(m.layout(), *m.provider, fo, backend);
    std::vector<Outcome> out(requests.size());
    SchedulerOptions so{max_sequences, chunk, 64};
    BatchScheduler scheduler(
        forward, so, [](int64_t, int32_t) { return false; },
        [&](int64_t id, std::span<const int32_t> tokens, FinishReason reason) {
            out[size_t(id)] = {std::vector<int32_t>(tokens.begin(), tokens.end()), reason};
        });
    for (const auto& r : requests) scheduler.add(r);
    // Vary the step size: the tokens must not care.
    int64_t target = 7;
    while (!scheduler.idle()) {
        scheduler.step(target);
        target = target * 3 % 61 + 8;
    }
    return out;
}

std::string read_text(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Records (lines) in a results file; 0 before it exists.
int64_t records_in(const fs::path& p) {
    if (!fs::exists(p)) return 0;
    const std::string t = read_text(p);
    return std::count(t.begin(), t.end(), '\n');
}

// Runs `sh -c cmd` as a child process; its pid.
pid_t start_shell(const std::string& cmd) {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    return pid;
}

// Waits until `out` holds `records` records or the child ends: the child's pid if it ended (its
// status in `status`), else 0.
pid_t wait_for_records(pid_t pid, const fs::path& out, int64_t records, int& status) {
    pid_t reaped = 0;
    while ((reaped = waitpid(pid, &status, WNOHANG)) == 0 && records_in(out) < records)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return reaped;
}

}  // namespace

TEST_CASE("a request's greedy and seeded tokens are the same alone as in any batch") {
    auto m = load_model(tiny_model().string());
    ThreadPool pool(2);
    // Half greedy, half sampled with their own seeds.
    const auto requests = random_requests(3, 10, 2);
    std::vector<Outcome> alone;
    for (const auto& r : requests) {
        ScheduledRequest single = r;
        single.id = 0;
        alone.push_back(run(*m, {single}, 1, 8, pool)[0]);
    }
    // Many in flight, finished ones replaced, prompt chunks beside decode tokens.
    for (int max_sequences : {3, 10}) {
        const auto batched = run(*m, requests, max_sequences, 8, pool);
        for (size_t i = 0; i < requests.size(); ++i) {
            INFO("request ", i, " with ", max_sequences, " in flight");
            CHECK(batched[i].tokens == alone[i].tokens);
            CHECK(int64_t(batched[i].tokens.size()) == requests[i].max_new_tokens);
        }
    }
    // The same requests in another order around each other: the same tokens per request.
    std::vector<ScheduledRequest> reversed(requests.rbegin(), requests.rend());
    for (size_t i = 0; i < reversed.size(); ++i) reversed[i].id = int64_t(i);
    const auto back = run(*m, reversed, 4, 8, pool);
    for (size_t i = 0; i < requests.size(); ++i) CHECK(back[requests.size() - 1 - i].tokens == alone[i].tokens);
    // Greedy requests differ from each other (the check above is not vacuous).
    CHECK(alone[0].tokens != alone[2].tokens);
}

TEST_CASE("an offline job prefills the longest outputs first; a server keeps the order requests came in") {
    auto m = load_model(tiny_model().string());
    ThreadPool pool(2);
    // Prompts of one chunk each and steps of one chunk: each step prefills one prompt, so the order
    // of first tokens is the order of prefill.
    constexpr int64_t kChunk = 8;
    const int64_t new_tokens[] = {3, 9, 5, 9, 2, 7};
    std::mt19937 rng(21);
    std::vector<ScheduledRequest> requests;
    for (int i = 0; i < 6; ++i) {
        ScheduledRequest r;
        r.id = i;
        r.prompt = random_prompt(rng, kChunk);
        r.max_new_tokens = new_tokens[i];
        r.stop_at_eos = false;
        requests.push_back(r);
    }
    struct Run {
        std::vector<int64_t> first_token_order;
        std::vector<std::vector<int32_t>> tokens;
    };
    auto run_ordered = [&](int max_sequences, RequestOrder order) {
        ForwardOptions fo{RunShape{max_sequences, 96, 64}};
        CpuBackend backend(pool);
        DeepseekForward forward(m->layout(), *m->provider, fo, backend);
        Run out;
        out.tokens.resize(requests.size());
        std::vector<bool> started(requests.size());
        SchedulerOptions so{max_sequences, kChunk, 64, order};
        BatchScheduler scheduler(
            forward, so,
            [&](int64_t id, int32_t) {
                if (!started[size_t(id)]) out.first_token_order.push_back(id);
                started[size_t(id)] = true;
                return false;
            },
            [&](int64_t id, std::span<const int32_t> tokens, FinishReason) {
                out.tokens[size_t(id)].assign(tokens.begin(), tokens.end());
            });
        for (const auto& r : requests) scheduler.add(r);
        while (!scheduler.idle()) scheduler.step(kChunk);
        return out;
    };
    // All in flight at once (prefill order), and two at a time (admission order).
    for (int max_sequences : {6, 2}) {
        INFO(max_sequences, " in flight");
        const Run fifo = run_ordered(max_sequences, RequestOrder::fifo);
        CHECK(fifo.first_token_order == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
        const Run longest = run_ordered(max_sequences, RequestOrder::longest_output_first);
        // Most max_new_tokens first, ties (1 and 3 both 9) in the order added.
        CHECK(longest.first_token_order == std::vector<int64_t>{1, 3, 5, 2, 0, 4});
        // The order changes when a request runs, not what it generates.
        CHECK(longest.tokens == fifo.tokens);
        for (size_t i = 0; i < requests.size(); ++i) CHECK(int64_t(fifo.tokens[i].size()) == new_tokens[i]);
    }
}

TEST_CASE("a prompt chunk that does not fit the step leaves its room to a shorter one") {
    auto m = load_model(tiny_model().string());
    ThreadPool pool(2);
    ForwardOptions fo{RunShape{3, 96, 64}};
    CpuBackend backend(pool);
    DeepseekForward forward(m->layout(), *m->provider, fo, backend);
    std::vector<int64_t> first_token_order;
    std::vector<int64_t> finished(3, -1);
    BatchScheduler scheduler(
        forward, SchedulerOptions{3, 8, 64},
        [&](int64_t id, int32_t) {
            if (std::find(first_token_order.begin(), first_token_order.end(), id) == first_token_order.end())
                first_token_order.push_back(id);
            return false;
        },
        [&](int64_t id, std::span<const int32_t> tokens, FinishReason) { finished[size_t(id)] = int64_t(tokens.size()); });
    std::mt19937 rng(4);
    const int64_t lengths[] = {8, 8, 3};
    for (int64_t i = 0; i < 3; ++i) {
        ScheduledRequest r;
        r.id = i;
        r.prompt = random_prompt(rng, lengths[i]);
        r.max_new_tokens = 2;
        r.stop_at_eos = false;
        scheduler.add(r);
    }
    // A step of 12: request 0's 8 positions, then request 1's 8 would not fit but request 2's 3 do.
    const ScheduledStep first = scheduler.step(12);
    CHECK(first.n_prefill == 11);
    while (!scheduler.idle()) scheduler.step(12);
    CHECK(first_token_order == std::vector<int64_t>{0, 2, 1});
    CHECK(finished == std::vector<int64_t>{2, 2, 2});
}

namespace {

// The weights as the forward sees them, noting each step's size and what the caller said the
// step after it would carry.
class NextStepHints final : public WeightProvider {
public:
    explicit NextStepHints(WeightProvider& inner) : inner_(inner) {}
    const ModelWeights& globals() override { return inner_.globals(); }
    const LayerWeights& begin_layer(int layer) override { return inner_.begin_layer(layer); }
    void need_experts(int layer, std::span<const int32_t> experts) override { inner_.need_experts(layer, experts); }
    int32_t next_expert(int layer, const ExpertWeights** weights) override { return inner_.next_expert(layer, weights); }
    void end_layer(int layer) override { inner_.end_layer(layer); }
    void begin_step(int64_t n_tokens) override {
        steps.push_back(n_tokens);
        hints.push_back(hint_);
        inner_.begin_step(n_tokens);
    }
    void expect_next_step(int64_t n_tokens) override { hint_ = n_tokens; }

    std::vector<int64_t> steps, hints;  // per step: its tokens, and the hint given for the step after it

private:
    WeightProvider& inner_;
    int64_t hint_ = -1;
};

}  // namespace

// The streamer may start the next step's first reads before it begins when that step will be
// wide: the scheduler says how many tokens it expects it to carry (decoders then, and the prompt
// positions left, capped at a step). All requests queued at once: never fewer than it carries.
TEST_CASE("the scheduler tells the weights about how many tokens its next step will carry") {
    auto m = load_model(tiny_model().string());
    ThreadPool pool(2);
    ForwardOptions fo{RunShape{4, 96, 64}};
    CpuBackend backend(pool);
    NextStepHints hints(*m->provider);
    DeepseekForward forward(m->layout(), hints, fo, backend);
    BatchScheduler scheduler(
        forward, SchedulerOptions{4, 16, 64, RequestOrder::longest_output_first}, [](int64_t, int32_t) { return false; },
        [](int64_t, std::span<const int32_t>, FinishReason) {});
    std::mt19937 rng(8);
    for (int64_t i = 0; i < 6; ++i) {
        ScheduledRequest r;
        r.id = i;
        r.prompt = random_prompt(rng, 20 + 7 * i);
        r.max_new_tokens = 2 + i;
        r.stop_at_eos = false;
        scheduler.add(r);
    }
    while (!scheduler.idle()) scheduler.step(64);
    const auto& steps = hints.steps;
    REQUIRE(steps.size() >= 4);
    int exact = 0;
    for (size_t j = 0; j + 1 < steps.size(); ++j) {
        CAPTURE(j);
        const int64_t hint = hints.hints[j];  // given as step j was scheduled, for step j + 1
        CHECK(hint <= 64);
        CHECK(hint >= steps[j + 1]);
        exact += hint == steps[j + 1];
    }
    CHECK(hints.hints[0] == 64);  // after the first step, prompts enough for a whole step remain
    CHECK(exact >= 2);
}

TEST_CASE("latent caches spilled to disk give the same tokens as caches in memory") {
    auto m = load_model(tiny_model().string());
    ThreadPool pool(2);
    const auto requests = random_requests(8, 9, 3);
    const auto in_memory = run(*m, requests, 4, 8, pool);
    const uint64_t slot = SpilledLatentCache::slot_bytes(m->layout(), 96);
    // Every layer on disk through the smallest buffer (one cache at a time ahead), then one layer
    // in memory and room to read a whole layer ahead.
    for (auto [resident, buffer] : {std::pair<int, uint64_t>{0, 2 * slot}, {1, 8 * slot}}) {
        SpillOptions spill;
        spill.path = (scratch_dir() / "spill.bin").string();
        spill.resident_layers = resident;
        spill.buffer_bytes = buffer;
        {
            // The file has no name while its cache lives (its descriptors keep it): a job killed
            // with SIGKILL leaves nothing behind. Before, every kill left .sluice-spill-PID.bin
            // holding what it had written (8 files after 15 kills of a 200-request job).
            CpuBackend backend(pool);
            SpilledLatentCache cache(m->layout(), 4, 96, backend, spill);
            CHECK_FALSE(fs::exists(spill.path));
        }
        const auto spilled = run(*m, requests, 4, 8, pool, &spill);
        for (size_t i = 0; i < requests.size(); ++i) {
            INFO("request ", i, ", ", resident, " layers in memory");
            CHECK(spilled[i].tokens == in_memory[i].tokens);
        }
        CHECK_FALSE(fs::exists(spill.path));  // removed with the cache
    }
}

TEST_CASE("the results file drops a torn last line and keeps complete records") {
    const fs::path p = scratch_dir() / "torn.jsonl";
    {
        std::ofstream f(p, std::ios::binary | std::ios::trunc);
        f << R"({"id":"batch_req_a","custom_id":"a","response":null,"error":null})" << "\n";
        f << R"({"id":"batch_req_b","custom_id":"b","resp)";  // killed mid-write
    }
    {
        BatchResultsFile results(p.string());
        CHECK(results.dropped_bytes() > 0);
        CHECK(results.done("batch_req_a"));
        CHECK_FALSE(results.done("batch_req_b"));
        const std::vector<std::string> more = {R"({"id":"batch_req_c","custom_id":"c","response":null,"error":null})"};
        results.append(more);
    }
    const std::string text = read_text(p);
    CHECK(text.find("batch_req_b") == std::string::npos);
    CHECK(text.find("batch_req_c") != std::string::npos);
    CHECK(text.back() == '\n');
    // A record that is not the last line is not ours to drop.
    {
        std::ofstream f(p, std::ios::binary | std::ios::app);
        f << "garbage\n" << R"({"id":"batch_req_d","custom_id":"d","response":null,"error":null})" << "\n";
    }
    CHECK_THROWS_WITH_AS(BatchResultsFile(p.string()), doctest::Contains("line 3"), Error);
}

namespace {

// Runs fn() with writes limited to files of `bytes` (RLIMIT_FSIZE; SIGXFSZ ignored, so a write
// past it fails with EFBIG as one on a full disk fails with ENOSPC), then lifts the limit.
template <class F>
void with_file_size_limit(uint64_t bytes, F fn) {
    rlimit before{};
    REQUIRE(getrlimit(RLIMIT_FSIZE, &before) == 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit cap = before;
    cap.rlim_cur = rlim_t(bytes);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &cap) == 0);
    try {
        fn();
    } catch (...) {
        setrlimit(RLIMIT_FSIZE, &before);
        std::signal(SIGXFSZ, old_handler);
        throw;
    }
    setrlimit(RLIMIT_FSIZE, &before);
    std::signal(SIGXFSZ, old_handler);
}

// One line of a batch input file: a request with this custom_id and body, POSTed to `url`.
std::string request_line(const std::string& custom_id, const nlohmann::json& body,
                         const std::string& url = "/v1/completions") {
    return nlohmann::json{{"custom_id", custom_id}, {"method", "POST"}, {"url", url}, {"body", body}}.dump();
}

std::string record_line(const std::string& custom_id) {
    return nlohmann::json{{"id", batch_request_record_id(custom_id)}, {"custom_id", custom_id},
                          {"response", {{"status_code", 200}, {"body", {{"text", std::string(120, 'x')}}}}},
                          {"error", nullptr}}
        .dump();
}

}  // namespace

TEST_CASE("a full disk is an error naming the file, and leaves no short or half-written output") {
    const fs::path dir = scratch_dir() / "full";
    fs::create_directories(dir);
    const fs::path input = dir / "in.jsonl", part = dir / "part.jsonl", merged = dir / "merged.jsonl";
    {
        std::ofstream in(input), out(part);
        for (const char* id : {"a", "b", "c"}) {
            in << request_line(id, {{"prompt", "hi"}, {"max_tokens", 2}}) << "\n";
            out << record_line(id) << "\n";
        }
    }
    { std::ofstream(merged) << "the merge before\n"; }
    const uint64_t part_bytes = fs::file_size(part);
    // batch-merge: before, its ofstream kept the bytes in its buffer, lost them at close and
    // reported "3 of 3 records written" over an empty file (measured on a full 60 KiB tmpfs).
    with_file_size_limit(part_bytes / 2, [&] {
        CHECK_THROWS_WITH_AS(merge_batch_outputs(input.string(), {part.string()}, merged.string()),
                             doctest::Contains("merged.jsonl.tmp: write failed: File too large"), Error);
    });
    CHECK(read_text(merged) == "the merge before\n");
    CHECK_FALSE(fs::exists(dir / "merged.jsonl.tmp"));
    CHECK(merge_batch_outputs(input.string(), {part.string()}, merged.string()).ok());
    CHECK(read_text(merged) == read_text(part));

    // The results file's rewrite in input order: the records stay as they were, and before, the
    // half-written temporary file stayed too, holding the space a full disk no longer had.
    const fs::path results_path = dir / "results.jsonl";
    BatchResultsFile results(results_path.string());
    const std::vector<std::string> lines = {record_line("c"), record_line("a"), record_line("b")};
    results.append(lines);
    const std::string appended = read_text(results_path);
    const std::vector<std::string> order = {batch_request_record_id("a"), batch_request_record_id("b"),
                                            batch_request_record_id("c")};
    with_file_size_limit(appended.size() / 2, [&] {
        CHECK_THROWS_WITH_AS(results.rewrite_in_order(order), doctest::Contains("results.jsonl.tmp: write failed"), Error);
    });
    CHECK(read_text(results_path) == appended);
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    CHECK(files == std::vector<std::string>{"in.jsonl", "merged.jsonl", "part.jsonl", "results.jsonl"});
    results.rewrite_in_order(order);
    CHECK(read_text(results_path) == read_text(merged));
}

TEST_CASE("a job killed with SIGKILL at 24 random moments resumes to the bytes of an uninterrupted run") {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const fs::path dir = scratch_dir();
    const fs::path input = dir / "requests.jsonl";
    {
        std::ofstream f(input);
        std::mt19937 rng(9);
        for (int i = 0; i < 40; ++i) {
            nlohmann::json body;
            if (i % 2) {
                body = {{"messages", {{{"role", "user"}, {"content", fmt::format("Tell me about item {}", i)}}}},
                        {"max_tokens", 6 + i % 11},
                        {"temperature", 0}};
            } else {
                body = {{"prompt", fmt::format("Once upon a time {} ", i)}, {"max_tokens", 5 + i % 13}, {"temperature", 0}};
            }
            if (i % 5 == 0) body["ignore_eos"] = true;
            f << request_line(fmt::format("req-{}", i), body, i % 2 ? "/v1/chat/completions" : "/v1/completions")
              << "\n";
            if (i == 17) f << "{not json\n";
        }
    }
    // Everything the child needs is built before fork(): after it, only async-signal-safe calls
    // (another thread may have held the allocator's lock when the process was copied).
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    auto spawn = [&](const fs::path& out, const std::vector<std::string>& extra, const std::string& log) {
        std::vector<std::string> args = {bin, "batch", "-m", tiny_model().string(), "-i", input.string(), "-o",
                                         out.string(), "-t", "1"};
        args.insert(args.end(), extra.begin(), extra.end());
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        const pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) dup2(fd, STDERR_FILENO);
            execv(bin, argv.data());
            _exit(127);
        }
        return pid;
    };
    const std::vector<std::string> job_options = {"--max-seqs", "5", "--prefill-chunk", "8", "--resident", "none"};
    // Kills once the output holds `after_records` more records than at the start, `extra_ms` later
    // (a moment in the middle of a step, an append or start-up); kill_after < 0: runs to the end.
    auto run_job = [&](const fs::path& out, int after_records, int extra_ms) {
        const auto start_records = records_in(out);
        const pid_t pid = spawn(out, job_options, "/dev/null");
        int status = 0;
        if (after_records >= 0) {
            wait_for_records(pid, out, start_records + after_records, status);
            std::this_thread::sleep_for(std::chrono::milliseconds(extra_ms));
            if (waitpid(pid, &status, WNOHANG) == 0) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                return -SIGKILL;
            }
            return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        }
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    };
    const fs::path reference = dir / "reference.jsonl";
    REQUIRE(run_job(reference, -1, 0) == 0);

    const fs::path resumed = dir / "resumed.jsonl";
    std::mt19937 rng(17);
    std::uniform_int_distribution<int> records(0, 2), delay_ms(0, 60);
    int kills = 0, kills_with_progress = 0;
    for (int attempt = 0; attempt < 200 && kills < 24; ++attempt) {
        const auto before = fs::exists(resumed) ? fs::file_size(resumed) : 0;
        if (run_job(resumed, records(rng), delay_ms(rng)) != -SIGKILL) continue;
        ++kills;
        if (fs::exists(resumed) && fs::file_size(resumed) > before) ++kills_with_progress;
    }
    MESSAGE(kills, " kills, ", kills_with_progress, " of them after new records");
    CHECK(kills >= 20);
    REQUIRE(run_job(resumed, -1, 0) == 0);
    const std::string want = read_text(reference), got = read_text(resumed);
    CHECK(std::count(want.begin(), want.end(), '\n') == 41);
    CHECK(got == want);
    // SIGTERM: the step in progress finishes, the process says how to resume and exits 128 + 15.
    const fs::path term = dir / "term.jsonl";
    const pid_t pid = spawn(term, {"--max-seqs", "2", "--prefill-chunk", "4"}, (dir / "term.log").string());
    // Once it is running steps (a few records in), SIGTERM.
    int status = 0;
    if (wait_for_records(pid, term, 4, status) == 0) {
        kill(pid, SIGTERM);
        waitpid(pid, &status, 0);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        MESSAGE("the job finished before SIGTERM arrived; nothing to check");
    } else {
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 128 + SIGTERM);
        CHECK(read_text(dir / "term.log").find("Run the same command again to resume") != std::string::npos);
    }
}

TEST_CASE("sluice batch --trace writes the job's timeline: a forward pass per step, its reads beside it") {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const fs::path dir = scratch_dir() / "trace";
    fs::create_directories(dir);
    const fs::path input = dir / "requests.jsonl", out = dir / "out.jsonl", trace = dir / "trace.json",
                   stats = dir / "stats.jsonl";
    {
        std::ofstream f(input);
        for (int i = 0; i < 6; ++i)
            f << request_line(fmt::format("t-{}", i), {{"prompt", fmt::format("Trace me {}", i)}, {"max_tokens", 3 + i}})
              << "\n";
    }
    const std::string cmd = fmt::format(
        "'{}' batch -m '{}' -i '{}' -o '{}' -t 1 --max-seqs 3 --resident none --trace '{}' --stats-json '{}' 2>'{}'", bin,
        tiny_model().string(), input.string(), out.string(), trace.string(), stats.string(), (dir / "log").string());
    REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, read_text(dir / "log"));
    int64_t steps = 0;
    {
        std::ifstream in(stats);
        for (std::string line; std::getline(in, line);) steps += nlohmann::json::parse(line).contains("step");
    }
    REQUIRE(steps > 1);
    const auto j = nlohmann::json::parse(read_text(trace));
    int64_t embeds = 0, reads = 0;
    for (const auto& e : j.at("traceEvents")) {
        if (e.value("ph", "") != "X") continue;
        const std::string name = e.value("name", "");
        embeds += name == "embed";
        reads += name.rfind("read", 0) == 0;
    }
    // One embedding per step's forward pass; with nothing resident, every step reads.
    CHECK(embeds == steps);
    CHECK(reads >= steps);
}

namespace {

// A line rewritten with a longer prompt, or the file cut short under the job (an editor truncates
// before it writes: a job reading then finds the line gone): the same error either way.
void check_input_changed_under_job(const std::string& name, bool cut) {
    CAPTURE(name);
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const fs::path dir = scratch_dir() / name;
    fs::create_directories(dir);
    const fs::path input = dir / "requests.jsonl", out = dir / "out.jsonl", log = dir / "log";
    // Equal max_tokens: they start in input order, one at a time (--max-seqs 1).
    auto input_text = [&](const std::string& last_prompt) {
        std::string text;
        for (int i = 0; i < 12; ++i)
            text += request_line(fmt::format("c-{}", i), {{"prompt", i == 11 ? last_prompt : fmt::format("Count to {}", i)},
                                                          {"max_tokens", 6},
                                                          {"temperature", 0}}) +
                    "\n";
        return text;
    };
    const std::string first = input_text("The last one");
    std::ofstream(input, std::ios::binary) << first;
    const std::string cmd = fmt::format("'{}' batch -m '{}' -i '{}' -o '{}' -t 1 --max-seqs 1 --prefill-chunk 4 2>'{}'",
                                        bin, tiny_model().string(), input.string(), out.string(), log.string());
    const pid_t pid = start_shell(cmd);
    // Once the first record is in, the last line's prompt changes (same custom_id, more tokens),
    // or the file is cut before it.
    int status = 0;
    if (wait_for_records(pid, out, 1, status) != 0) {
        MESSAGE("the job finished before its input could change; nothing to check");
        return;
    }
    // In place, so that the job, which may be reading an earlier line, never sees those change:
    // the same bytes written over them, or the file cut after them.
    if (cut) {
        fs::resize_file(input, first.rfind('\n', first.size() - 2) + 1);  // the 12th line gone
    } else {
        std::fstream f(input, std::ios::in | std::ios::out | std::ios::binary);
        f << input_text("The last one, now with a much longer prompt than it had when the job began");
    }
    waitpid(pid, &status, 0);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) != 0);
    const std::string message = read_text(log);
    CHECK(message.find("line 12 changed while the job ran") != std::string::npos);
    if (cut) CHECK(message.find("the file ended at byte") != std::string::npos);
    const auto kept = records_in(out);
    CHECK(kept >= 1);
    CHECK(kept <= 11);
    if (cut) return;
    // Run again on the file as it is: the finished records are kept, the rest run.
    REQUIRE(std::system(cmd.c_str()) == 0);
    CHECK(records_in(out) == 12);
}

}  // namespace

TEST_CASE("prompts are read again as requests start: an input changed under a running job is an error naming "
          "its line, and the finished records stay") {
    check_input_changed_under_job("changed", false);
    check_input_changed_under_job("cut", true);
}

TEST_CASE("the progress line counts tokens as they are made and estimates the end from the work done") {
    BatchProgress progress(0, 30, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    BatchProgressFigures f;
    f.total = 512;
    f.work_total = 1000;
    // Nothing finished and no work yet: no estimate.
    CHECK(progress.line(f).find("ETA ?") != std::string::npos);
    // Half the work done, no request finished (long outputs): an estimate all the same, about the
    // time taken so far, and a token rate from the tokens made.
    f.work_done = 500;
    f.output_tokens = 100;
    const std::string half = progress.line(f);
    CHECK(half.find("0/512 requests") != std::string::npos);
    CHECK(half.find("ETA ?") == std::string::npos);
    CHECK(half.find("ETA 0s") != std::string::npos);
    CHECK(half.find(" 0.00 output tokens/s") == std::string::npos);
}

TEST_CASE("a job stopped by SIGTERM between requests is not reported complete in --stats-json") {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const fs::path dir = scratch_dir() / "term-between";
    fs::create_directories(dir);
    const fs::path input = dir / "requests.jsonl", out = dir / "out.jsonl", stats = dir / "stats.jsonl";
    {
        // One token each, one at a time: every step ends with nothing running.
        std::ofstream f(input);
        for (int i = 0; i < 40; ++i)
            f << request_line(fmt::format("b-{}", i),
                              {{"prompt", fmt::format("Item {}", i)}, {"max_tokens", 1}, {"temperature", 0}})
              << "\n";
    }
    const std::string cmd =
        fmt::format("exec '{}' batch -m '{}' -i '{}' -o '{}' -t 1 --max-seqs 1 --stats-json '{}' 2>/dev/null", bin,
                    tiny_model().string(), input.string(), out.string(), stats.string());
    const pid_t pid = start_shell(cmd);
    int status = 0;
    if (wait_for_records(pid, out, 2, status) == 0) {
        kill(pid, SIGTERM);
        waitpid(pid, &status, 0);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        MESSAGE("the job finished before SIGTERM arrived; nothing to check");
        return;
    }
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 128 + SIGTERM);
    nlohmann::json summary;
    {
        std::ifstream in(stats);
        for (std::string line; std::getline(in, line);) {
            const auto j = nlohmann::json::parse(line);
            if (j.contains("summary")) summary = j["summary"];
        }
    }
    REQUIRE(summary.is_object());
    CHECK(summary["done"].get<int64_t>() < 40);
    CHECK(summary["complete"] == false);
}

TEST_CASE("latent caches that do not fit the budget spill to disk by themselves, with the tokens of a run that "
          "holds them") {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const fs::path dir = scratch_dir() / "auto-spill";
    fs::create_directories(dir);
    const fs::path input = dir / "requests.jsonl";
    // 24 requests of 1,500-position prompts: their caches (24 x 1,503 positions x 3 layers of
    // 288 floats) are 125 MB in memory, where spilled they need a buffer of one layer's (42 MB).
    constexpr int kRequests = 24;
    constexpr int64_t kPrompt = 1500, kMaxTokens = 3;
    {
        std::mt19937 rng(5);
        std::ofstream f(input);
        for (int i = 0; i < kRequests; ++i)
            f << request_line(fmt::format("s-{}", i), {{"prompt", random_prompt(rng, kPrompt)}, {"max_tokens", kMaxTokens}})
              << "\n";
    }
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    auto run_job = [&](const std::string& name, const std::string& ram) {
        const fs::path out = dir / (name + ".jsonl"), log = dir / (name + ".log");
        const std::string cmd = fmt::format("'{}' batch -m '{}' -i '{}' -o '{}' -t 1 --max-seqs {} --resident none "
                                            "--max-step-tokens 1024 --ram {} --spill-dir '{}' --stats-json '{}' 2>'{}'",
                                            bin, tiny_model().string(), input.string(), out.string(), kRequests, ram,
                                            dir.string(), (dir / (name + ".stats.jsonl")).string(), log.string());
        const int rc = std::system(cmd.c_str());
        return std::tuple{rc, read_text(out), read_text(log)};
    };
    // The plan with every cache in memory, under a budget it fits.
    const auto [held_rc, held_out, held_log] = run_job("held", "4G");
    REQUIRE_MESSAGE(held_rc == 0, held_log);
    CHECK(held_log.find("spill") == std::string::npos);
    const size_t at = held_log.find("; total ");
    REQUIRE(at != std::string::npos);
    const double held_total_gib = std::stod(held_log.substr(at + 8));
    // A budget 40 MB short of it (the plan is printed to 0.01 GiB): the caches no longer fit in
    // memory, and spilled (125 MB less a 42 MB buffer: 83 MB less) they do.
    const uint64_t slot = SpilledLatentCache::slot_bytes(open_model(tiny_model().string())->layout, kPrompt + kMaxTokens);
    const uint64_t in_memory = uint64_t(kRequests) * uint64_t(kPrompt + kMaxTokens) * 3 * 288 * 4;
    REQUIRE(in_memory - kRequests * slot > uint64_t(60) << 20);
    const uint64_t budget = uint64_t(held_total_gib * double(1 << 30)) - (uint64_t(40) << 20);
    const auto [rc, out, log] = run_job("spilled", std::to_string(budget));
    REQUIRE_MESSAGE(rc == 0, log);
    CHECK(log.find("do not fit the memory budget beside steps of") != std::string::npos);
    CHECK(log.find("and the model's least: they spill to disk") != std::string::npos);
    CHECK(log.find("latent caches of layers 0..2 spill to") != std::string::npos);
    // The time blocked on the spilled caches is reported (the write-back runs on its own thread, so
    // it may be 0), beside the bytes: every step writes its new positions back.
    const auto summary_of = [&](const std::string& name) {
        nlohmann::json last;
        std::ifstream in(dir / (name + ".stats.jsonl"));
        for (std::string line; std::getline(in, line);) last = nlohmann::json::parse(line);
        return last.at("summary");
    };
    const auto spilled_summary = summary_of("spilled"), held_summary = summary_of("held");
    CHECK(spilled_summary.at("spill_bytes_written").get<uint64_t>() > 0);
    CHECK(spilled_summary.at("spill_wait_s").at("write").get<double>() >= 0);
    CHECK(spilled_summary.at("spill_wait_s").at("read").get<double>() >= 0);
    CHECK(held_summary.at("spill_bytes_written").get<uint64_t>() == 0);
    CHECK(held_summary.at("spill_wait_s").at("write").get<double>() == 0);
    // The same records (the job's steps are the same size, so even in the same order).
    CHECK(out == held_out);
    CHECK(records_in(dir / "spilled.jsonl") == kRequests);
    // 150 MB short, below even the spilled plan: the job's error names the smallest budget, and
    // --max-seqs among the ways out.
    const auto [small_rc, small_out, small_log] = run_job("small", std::to_string(budget - (uint64_t(110) << 20)));
    CHECK(small_rc != 0);
    CHECK(small_log.find("the model needs at least") != std::string::npos);
    CHECK(small_log.find("--max-seqs") != std::string::npos);
}

TEST_CASE("a batch job's memory choice: the larger step first, and caches spilled when that reads less a step") {
    // A model plan of 2 layers (a dense segment of 100 bytes each, 4 experts of 10 bytes each) and
    // memory plans made by hand, so each rule is seen on its own: the planner's own figures are
    // checked against allocations in memory_planner_test.
    ModelPlan model;
    for (int l = 0; l < 2; ++l) {
        LayerPlan layer;
        PlannedTensor dense{};
        dense.extent.length = 100;
        layer.dense.tensors = {dense};
        for (int e = 0; e < 4; ++e) {
            PlannedTensor t{};
            t.extent.length = 10;
            Segment s;
            s.tensors = {t};
            layer.experts.push_back(s);
        }
        model.layers.push_back(layer);
    }
    auto memory = [](int buffers, int slots, bool dense_resident, uint64_t spilled) {
        RunMemoryPlan p;
        p.mode = ResidentMode::automatic;
        p.memory.expert_pool.slot_bytes = 10;
        p.memory.expert_pool.count = buffers;
        p.memory.expert_slots = slots;
        p.memory.resident_dense_bytes = dense_resident ? 200 : 0;
        p.memory.mla_spilled_bytes = spilled;
        return p;
    };
    // 80 bytes of experts, 200 of dense parts: 2 slots and no cache, dense streamed, read all 280.
    CHECK(full_step_read_bytes(model, memory(2, 2, false, 0).memory) == 280);
    // 5 cache entries hold 50 of the 80; the dense parts resident; 30 bytes of caches spilled.
    CHECK(full_step_read_bytes(model, memory(7, 2, true, 30).memory) == 30 + 30);
    // A cache larger than the model's experts reads none of them.
    CHECK(full_step_read_bytes(model, memory(20, 2, true, 0).memory) == 0);

    SUBCASE("the default step caps, largest first; a given cap alone") {
        CHECK(batch_step_choices(0, 64, 256) == std::vector<int64_t>{kBatchStepTokens, kBatchStepTokensFallback, 512});
        // 512 sequences and a chunk of 256: the least is 768
        CHECK(batch_step_choices(0, 512, 256) == std::vector<int64_t>{1536, 1024, 768});
        // a least above the fallback: the fallback is skipped
        CHECK(batch_step_choices(0, 1000, 256) == std::vector<int64_t>{1536, 1256});
        CHECK(batch_step_choices(0, 2000, 256) == std::vector<int64_t>{2256});
        CHECK(batch_step_choices(300, 512, 256) == std::vector<int64_t>{300});
    }

    const LatentCachePlan kept{2, 0}, spilled{0, 64};
    const std::vector<int64_t> steps{1024, 768};
    auto oom = [] { fail(ErrorKind::out_of_memory, "does not fit"); };
    std::vector<std::string> tried;
    auto note = [&](const LatentCachePlan& c, int64_t t) { tried.push_back(fmt::format("{}@{}", c.resident_layers, t)); };

    SUBCASE("in memory at the larger step: no spill while spilling reads as much or more") {
        const auto choice = choose_batch_memory(model, 2, steps, {kept, spilled}, [&](const LatentCachePlan& c, int64_t t) {
            note(c, t);
            return c.resident_layers == 2 ? memory(4, 2, true, 0) : memory(7, 2, true, 80);  // 60 against 110
        });
        CHECK(choice.caches.resident_layers == 2);
        CHECK(choice.step_tokens == 1024);
        CHECK(choice.spill_reason.empty());
    }
    SUBCASE("caches that fit in memory only by streaming the dense parts spill, and the reason says so") {
        const auto choice = choose_batch_memory(model, 2, steps, {kept, spilled}, [&](const LatentCachePlan& c, int64_t t) {
            note(c, t);
            return c.resident_layers == 2 ? memory(2, 2, false, 0) : memory(7, 2, true, 80);  // 280 against 110
        });
        CHECK(choice.caches.resident_layers == 0);
        CHECK(choice.step_tokens == 1024);
        CHECK(choice.spill_reason.find("the dense parts streamed") != std::string::npos);
        CHECK(choice.spill_reason.find("2 expert buffers") != std::string::npos);
    }
    SUBCASE("a larger step spilled beats a smaller one in memory") {
        const auto choice = choose_batch_memory(model, 2, steps, {kept, spilled}, [&](const LatentCachePlan& c, int64_t t) {
            note(c, t);
            if (c.resident_layers == 2 && t == 1024) oom();
            return memory(7, 2, true, 0);
        });
        CHECK(choice.caches.resident_layers == 0);
        CHECK(choice.step_tokens == 1024);
        CHECK(choice.spill_reason.empty());  // it had no choice: in memory did not fit
        CHECK(tried == std::vector<std::string>{"2@1024", "0@1024"});
    }
    SUBCASE("when nothing fits, the last plan's error is the job's") {
        CHECK_THROWS_WITH_AS(choose_batch_memory(model, 2, steps, {kept, spilled},
                                                 [&](const LatentCachePlan& c, int64_t t) -> RunMemoryPlan {
                                                     note(c, t);
                                                     if (t == 768 && c.resident_layers == 0)
                                                         fail(ErrorKind::out_of_memory, "needs at least 7 GiB");
                                                     oom();
                                                     return {};
                                                 }),
                             doctest::Contains("needs at least 7 GiB"), sluice::Error);
        CHECK(tried == std::vector<std::string>{"2@1024", "0@1024", "2@768", "0@768"});
    }
}
