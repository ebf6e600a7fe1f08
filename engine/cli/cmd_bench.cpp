// `sluice bench`: end-to-end speed of a model under a memory budget — prompt processing at
// several prompt lengths, decode, and decode with several sequences per step — with the
// streaming figures behind each (bytes read, read rate, overlap, hit rates). Prints a table,
// or one JSON object with --json. Token ids are drawn at random (seeded): speed, not text.
// With --json it also reports the inputs of a roofline (scripts/bench-streaming.py): the bytes a
// full pass streams, the matmul FLOPs per token, and the measured GEMM rate of the model's own
// expert and dense matrices at the token counts a prompt gives them.
#include <fmt/format.h>

#include <chrono>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "core/process_memory.hpp"
#include "core/thread_pool.hpp"
#include "engine/cli/bench_passes.hpp"
#include "engine/cli/command.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/routing_stats.hpp"
#include "engine/runtime.hpp"
#include "engine/sampler.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/quant_dot.hpp"

namespace sluice::cli {

namespace {

struct Phase {
    std::string name;
    int64_t tokens = 0;
    double seconds = 0;
    StepStats io;  // summed over the phase's steps (zero when fully resident)
};

nlohmann::json phase_json(const Phase& p) {
    nlohmann::json j = {{"phase", p.name}, {"tokens", p.tokens}, {"seconds", p.seconds},
                        {"tokens_per_s", p.seconds > 0 ? double(p.tokens) / p.seconds : 0.0}};
    j["streaming"] = p.io.to_json();
    return j;
}

// FLOP/s of cpu::gemm on one planned matrix as stored, at n_tokens activations: the matrix is
// read into memory once, then multiplied until at least min_seconds have passed (best rate of
// the runs, so a busy neighbour costs less).
nlohmann::json gemm_rate(const PlannedTensor& t, const TensorSource& source, int64_t n_tokens, ThreadPool& pool,
                         const char* what, double min_seconds = 0.6) {
    AlignedBuffer data(size_t(t.extent.length), 64), scales(size_t(std::max<uint64_t>(t.scales.length, 64)), 64);
    source.read(SourceTensor{t.name, t.type, {}, t.extent}, std::span<std::byte>(data.data(), t.extent.length));
    if (t.scales.length)
        source.read(SourceTensor{t.name + " (scales)", DType::F32, {}, t.scales},
                    std::span<std::byte>(scales.data(), t.scales.length));
    const Matrix m{t.type, t.rows, t.cols, data.data(), t.scales.length ? scales.as<float>() : nullptr,
                   t.scale_row_offset};
    std::vector<float> x(size_t(n_tokens * t.cols)), y(size_t(n_tokens * t.rows));
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& v : x) v = normal(rng);
    using Clock = std::chrono::steady_clock;
    cpu::gemm(m, x.data(), t.cols, n_tokens, y.data(), t.rows, pool);  // warm: caches, quantised-activation buffers
    double best = 1e300, total = 0;
    int runs = 0;
    while (total < min_seconds || runs < 3) {
        const auto t0 = Clock::now();
        cpu::gemm(m, x.data(), t.cols, n_tokens, y.data(), t.rows, pool);
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        best = std::min(best, s);
        total += s;
        ++runs;
    }
    const double flops = 2.0 * double(t.rows) * double(t.cols) * double(n_tokens);
    return {{"what", what},           {"tensor", t.name},  {"type", dtype_name(t.type)},
            {"rows", t.rows},         {"cols", t.cols},    {"tokens", n_tokens},
            {"runs", runs},           {"best_s", best},    {"flops_per_s", flops / best},
            {"weight_gb_per_s", double(t.extent.length) / best / 1e9}};
}

uint64_t matmul_flops(const Segment& s) {
    uint64_t f = 0;
    for (const auto& t : s.tensors)
        if (t.rows > 1) f += 2 * uint64_t(t.rows) * uint64_t(t.cols);
    return f;
}

// What a roofline of this model needs besides the disk rate: bytes a full pass streams, FLOPs
// per token by kind, and the GEMM rate measured on the model's own matrices at the token counts
// a prompt of `prompt_tokens` gives them (all tokens for the dense parts, tokens x top_k /
// n_experts for each routed expert).
nlohmann::json roofline_inputs(const Runtime& rt, int64_t prompt_tokens, int64_t batch_tokens, ThreadPool& pool) {
    const auto& d = rt.layout();
    const auto& plan = rt.model->plan;
    uint64_t layer_bytes = 0, dense_flops = 0, expert_flops = 0, router_flops = 0;
    for (const auto& l : plan.layers) {
        layer_bytes += l.dense.bytes();
        for (const auto& e : l.experts) layer_bytes += e.bytes();
        dense_flops += matmul_flops(l.dense);
        router_flops += matmul_flops(l.vectors);
        if (!l.experts.empty()) expert_flops += uint64_t(d.router.top_k) * matmul_flops(l.experts[0]);
    }
    const auto [expert_matrix, dense_matrix] = roofline_matrices(plan);
    // Attention over the latent cache, per token per visible position: scores over kv_rank + rope
    // and values over kv_rank, for every head and layer.
    const uint64_t attention_flops_per_position =
        2 * uint64_t(d.n_heads) * uint64_t(2 * d.kv_rank + d.rope_dim) * uint64_t(d.n_layers);
    uint64_t head_flops = 0;
    for (const auto& t : plan.globals.tensors)
        if (t.role == WeightRole::lm_head) head_flops = 2 * uint64_t(t.rows) * uint64_t(t.cols);
    nlohmann::json j = {{"prompt_tokens", prompt_tokens},
                        {"layer_bytes", layer_bytes},
                        {"resident_weight_bytes", rt.memory.resident_dense_bytes + rt.memory.resident_expert_bytes +
                                                      uint64_t(rt.memory.expert_cache_entries()) * rt.memory.expert_pool.slot_bytes},
                        {"dense_flops_per_token", dense_flops + router_flops},
                        {"expert_flops_per_token", expert_flops},
                        {"attention_flops_per_token_per_position", attention_flops_per_position},
                        {"head_flops_per_sequence", head_flops},
                        {"gemm", nlohmann::json::array()}};
    const int64_t expert_tokens = roofline_expert_tokens(d, prompt_tokens);
    if (expert_matrix)
        j["gemm"].push_back(gemm_rate(*expert_matrix, *rt.model->source, expert_tokens, pool, "expert"));
    if (dense_matrix)
        j["gemm"].push_back(gemm_rate(*dense_matrix, *rt.model->source, std::min(prompt_tokens, batch_tokens), pool,
                                      "dense"));
    return j;
}

}  // namespace

void register_bench(CLI::App& app) {
    auto* sub = app.add_subcommand("bench", "Prompt and decode speed of a model under a memory budget");
    struct Args {
        std::string model;
        std::string prompt_lengths = "16,128,512";
        int64_t decode = 16;
        std::string batch_sizes = "1,4,16";
        int threads = 0;
        int64_t batch_tokens = 512;
        uint64_t seed = 1;
        bool json = false;
        bool no_roofline = false;
        RuntimeOptions runtime;
    };
    auto args = std::make_shared<Args>();
    sub->add_option("-m,--model", args->model, "Model directory or .gguf file")->required();
    sub->add_option("--prompt-lengths", args->prompt_lengths, "Prompt lengths to time")->capture_default_str();
    sub->add_option("--decode", args->decode, "Decode steps to time")->capture_default_str();
    sub->add_option("--batch-sizes", args->batch_sizes, "Sequences decoded together per step")->capture_default_str();
    sub->add_option("-t,--threads", args->threads, "Compute threads (0 = all CPUs)")->capture_default_str();
    sub->add_option("-b,--batch", args->batch_tokens, "Tokens per prefill step")->capture_default_str();
    sub->add_option("--seed", args->seed, "Seed of the random token ids")->capture_default_str();
    sub->add_flag("--json", args->json, "Print one JSON object (with the roofline inputs: bytes, FLOPs, GEMM rate)");
    sub->add_flag("--no-roofline", args->no_roofline, "With --json: skip the GEMM-rate measurement");
    add_runtime_options(*sub, args->runtime);
    add_command(app, sub, [args] {
        const auto prompt_lengths = parse_positive_list(args->prompt_lengths, "--prompt-lengths");
        const auto batch_sizes = parse_positive_list(args->batch_sizes, "--batch-sizes");
        int64_t longest = 0, widest = 1;
        for (auto p : prompt_lengths) longest = std::max(longest, p);
        for (auto b : batch_sizes) widest = std::max(widest, b);

        ThreadPool pool(args->threads);
        RuntimeOptions ro = args->runtime;
        ro.n_threads = pool.size();
        ro.verbose = !args->json;
        // The passes to run, one after another, each planned as it runs.
        auto model = open_model(args->model);
        const BenchPasses passes = bench_passes(*model, prompt_lengths, batch_sizes, args->decode, args->batch_tokens,
                                                pool.size(), args->json && !args->no_roofline);
        ro.shapes = passes.shapes();
        ro.other_pass_bytes = passes.gemm_rate_bytes;
        const auto rt = make_runtime(std::move(model), ro);
        const auto& layout = rt->layout();
        // Every step's expert requests, for `sluice plan --routing` (the JSON's "routing").
        RoutingRecorder provider(rt->weights(), layout);
        std::mt19937_64 rng(args->seed);
        std::uniform_int_distribution<int32_t> token(2, int32_t(std::min<int64_t>(layout.vocab, 128000) - 1));

        auto io_since = [&](size_t first_step) {
            StepStats sum;
            if (!rt->streamer) return sum;
            const auto& steps = rt->streamer->steps();
            for (size_t i = first_step; i < steps.size(); ++i) sum += steps[i];
            return sum;
        };
        auto steps_now = [&] { return rt->streamer ? rt->streamer->steps().size() : size_t(0); };
        using Clock = std::chrono::steady_clock;
        std::vector<Phase> phases;
        std::vector<float> logits(size_t(widest * layout.vocab));
        uint64_t largest_pass_allocated = 0;  // the forward passes' own count, for the memory report

        for (const auto& [len, shape] : passes.prompts) {
            const auto forward_owner = rt->make_forward(ForwardOptions{shape, ro.attention}, pool, &provider);
            DeepseekForward& forward = *forward_owner;
            largest_pass_allocated = std::max(largest_pass_allocated, uint64_t(forward.allocated_bytes()));
            std::vector<int32_t> prompt(static_cast<size_t>(len));
            for (auto& t : prompt) t = token(rng);
            prompt[0] = layout.bos_id;
            const size_t first = steps_now();
            const auto t0 = Clock::now();
            forward.forward(prompt, false, logits.data());
            Phase p{fmt::format("prompt {}", len), len, std::chrono::duration<double>(Clock::now() - t0).count(),
                    io_since(first)};
            phases.push_back(p);
            if (len == prompt_lengths.front()) {
                // Decode after the first prompt, one token per step.
                const size_t first_decode = steps_now();
                const auto t1 = Clock::now();
                for (int64_t i = 0; i < args->decode; ++i) {
                    const int32_t next = argmax(logits.data(), layout.vocab);
                    forward.forward(std::span<const int32_t>(&next, 1), false, logits.data());
                }
                phases.push_back(Phase{"decode", args->decode,
                                       std::chrono::duration<double>(Clock::now() - t1).count(),
                                       io_since(first_decode)});
            }
        }
        for (const auto& [b, shape] : passes.batches) {
            const auto forward_owner = rt->make_forward(ForwardOptions{shape, ro.attention}, pool, &provider);
            DeepseekForward& forward = *forward_owner;
            largest_pass_allocated = std::max(largest_pass_allocated, uint64_t(forward.allocated_bytes()));
            std::vector<std::vector<int32_t>> prompts(size_t(b), std::vector<int32_t>(BenchPasses::kBatchPromptTokens));
            std::vector<SequenceTokens> step;
            for (auto& p : prompts)
                for (auto& t : p) t = token(rng);
            const int64_t per_step = shape.step_tokens / BenchPasses::kBatchPromptTokens;
            for (int64_t s0 = 0; s0 < b; s0 += per_step) {
                step.clear();
                for (int64_t s = s0; s < std::min(b, s0 + per_step); ++s) step.push_back({int(s), prompts[size_t(s)], false});
                forward.forward_batch(step, logits.data() + s0 * layout.vocab);
            }
            std::vector<int32_t> next(static_cast<size_t>(b));
            const size_t first = steps_now();
            const auto t0 = Clock::now();
            for (int64_t i = 0; i < args->decode; ++i) {
                step.clear();
                for (int64_t s = 0; s < b; ++s) {
                    next[size_t(s)] = argmax(logits.data() + s * layout.vocab, layout.vocab);
                    step.push_back({int(s), {&next[size_t(s)], 1}, false});
                }
                forward.forward_batch(step, logits.data());
            }
            phases.push_back(Phase{fmt::format("decode x{}", b), b * args->decode,
                                   std::chrono::duration<double>(Clock::now() - t0).count(), io_since(first)});
        }
        nlohmann::json roofline;
        if (args->json && !args->no_roofline) roofline = roofline_inputs(*rt, longest, args->batch_tokens, pool);
        // Planned against held: what the planner counted, what the weights and the largest forward
        // pass allocated (plus the process before and the logits), and the peak the OS saw.
        const uint64_t allocated = rt->memory.held_bytes + rt->weights_allocated_bytes() + largest_pass_allocated +
                                   AlignedBuffer::held_bytes(logits.size() * sizeof(float)) + rt->memory.kernel_scratch_bytes;
        const uint64_t peak = process_memory_bytes("VmHWM");

        if (args->json) {
            nlohmann::json j;
            j["model"] = args->model;
            j["resident"] = resident_mode_name(rt->mode);
            j["attention"] = attention_form_name(ro.attention);
            j["threads"] = pool.size();
            j["quant_dot"] = cpu::quant_dot_path_name(cpu::best_quant_dot_path());
            j["memory_plan"] = rt->memory.describe();
            j["memory_plan_bytes"] = rt->memory.to_json();
            j["memory"] = {{"budget", rt->budget.bytes},    {"budget_source", rt->budget.source},
                           {"planned", rt->memory.total_bytes}, {"allocated", allocated},
                           {"peak_resident", peak}};
            for (const auto& p : phases) j["phases"].push_back(phase_json(p));
            j["routing"] = provider.counts().to_json();
            if (!args->no_roofline) j["roofline"] = roofline;
            j["device"] = rt->device_name;
            fmt::print("{}\n", j.dump(2));
            rt->finish();
            return 0;
        }
        fmt::print("{:<14} {:>8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8}\n", "phase", "tokens", "seconds",
                   "tokens/s", "GB read", "read GB/s", "wait s", "overlap", "hits %");
        for (const auto& p : phases) {
            const auto& s = p.io;
            const double hits =
                s.experts_needed ? 100.0 * double(s.cache_hits + s.prefetch_hits) / double(s.experts_needed) : 0;
            fmt::print("{:<14} {:>8} {:>10.3f} {:>10.2f} {:>10.3f} {:>10.2f} {:>9.3f} {:>9.2f} {:>8.1f}\n", p.name,
                       p.tokens, p.seconds, double(p.tokens) / p.seconds, double(s.bytes_read) / 1e9,
                       s.read_seconds > 0 ? double(s.bytes_read) / s.read_seconds / 1e9 : 0.0, s.wait_seconds,
                       s.step_seconds > 0 ? std::max(s.read_seconds, s.compute_seconds) / s.step_seconds : 0.0, hits);
        }
        fmt::print("memory: planned {:.1f} MiB, allocated {:.1f} MiB, peak resident {:.1f} MiB, budget {:.1f} MiB\n",
                   double(rt->memory.total_bytes) / (1 << 20), double(allocated) / (1 << 20), double(peak) / (1 << 20),
                   double(rt->budget.bytes) / (1 << 20));
        rt->finish();
        return 0;
    });
}

}  // namespace sluice::cli
