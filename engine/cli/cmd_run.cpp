// `sluice run`: load a model, tokenize the prompt (or take ids), generate, stream the text,
// end with prompt and generation speed. --logits-out writes the prompt logits as .npy.
#include <fmt/format.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/cli/command.hpp"
#include "engine/deepseek_v3.hpp"
#include "engine/generate.hpp"
#include "engine/routing_stats.hpp"
#include "engine/runtime.hpp"
#include "formats/chat_template.hpp"
#include "formats/npy.hpp"
#include "kernels/cuda/device.hpp"

namespace sluice::cli {

namespace {

struct RunArgs {
    std::string model;
    std::string prompt;
    std::string prompt_ids;
    int64_t n_predict = 64;
    bool chat = false;
    std::string system;
    float temperature = 0.0f;
    int top_k = 0;
    float top_p = 1.0f;
    uint64_t seed = 0;
    int threads = 0;
    int64_t context = 4096;
    int64_t batch = 128;
    std::string logits_out;
    bool ignore_eos = false;
    bool stats = false;
    std::string stats_json;
    RuntimeOptions runtime;
};

std::vector<int32_t> parse_ids(const std::string& text) {
    std::vector<int32_t> ids;
    size_t pos = 0;
    while (pos < text.size()) {
        const size_t comma = text.find(',', pos);
        const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        try {
            size_t used = 0;
            const long v = std::stol(item, &used);
            if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument("range");
            ids.push_back(int32_t(v));
        } catch (const std::exception&) {
            fail(ErrorKind::invalid_input, "--prompt-ids: '{}' is not a token id", item);
        }
        if (comma == std::string::npos) break;
        pos = comma + 1;
    }
    return ids;
}

void report_stream_stats(const Streamer* streamer, const RoutingCounts& routing, bool print, const std::string& json_path) {
    if (streamer && print) {
        const StepStats t = streamer->totals();
        const double hits = t.experts_needed ? double(t.cache_hits) / double(t.experts_needed) : 0;
        const double prefetch = t.experts_needed ? double(t.prefetch_hits) / double(t.experts_needed) : 0;
        fmt::print(stderr,
                   "streaming: {} steps, {:.2f} GB read in {:.2f} s of reading ({:.2f} GB/s), compute {:.2f} s, waited "
                   "{:.2f} s, overlap efficiency {:.2f}; experts needed {}, cache hits {:.1f}%, prefetch hits {:.1f}% "
                   "({} predicted)\n",
                   t.step, double(t.bytes_read) / 1e9, t.read_seconds,
                   t.read_seconds > 0 ? double(t.bytes_read) / t.read_seconds / 1e9 : 0.0, t.compute_seconds,
                   t.wait_seconds, t.overlap_efficiency(), t.experts_needed, 100 * hits, 100 * prefetch, t.predicted);
    }
    if (!json_path.empty()) {
        std::FILE* f = std::fopen(json_path.c_str(), "w");
        if (!f) fail(ErrorKind::io, "{}: cannot create", json_path);
        if (streamer)
            for (const auto& s : streamer->steps()) std::fprintf(f, "%s\n", s.to_json().dump().c_str());
        // The last line: which experts the steps asked for (`sluice plan --routing FILE` reads it).
        std::fprintf(f, "%s\n", nlohmann::json{{"routing", routing.to_json()}}.dump().c_str());
        std::fclose(f);
    }
}

int run(const RunArgs& args) {
    if (args.prompt.empty() == args.prompt_ids.empty())
        fail(ErrorKind::invalid_input, "give exactly one of -p/--prompt and --prompt-ids");
    ThreadPool pool(args.threads);
    auto model = open_model(args.model);
    const auto& tokenizer = model->tokenizer;

    std::vector<int32_t> prompt;
    if (!args.prompt_ids.empty()) {
        prompt = parse_ids(args.prompt_ids);
    } else {
        if (!tokenizer) fail(ErrorKind::invalid_input, "{}: no tokenizer found; use --prompt-ids", args.model);
        if (args.chat) {
            std::vector<ChatMessage> messages;
            if (!args.system.empty()) messages.push_back({"system", args.system});
            messages.push_back({"user", args.prompt});
            const std::string text = render_chat(messages, model->chat_template, true);
            prompt = tokenizer->encode(text, false);  // the template already holds BOS
        } else {
            prompt = tokenizer->encode(args.prompt, true);
        }
    }

    // One sequence of the prompt and what is generated (at most --context), and the logits
    // generate() keeps: the next token's, and with --logits-out every prompt position's.
    const RunShape shape{1, std::min<int64_t>(args.context, int64_t(prompt.size()) + args.n_predict + 1), args.batch,
                         1 + (args.logits_out.empty() ? 0 : int64_t(prompt.size()))};
    RuntimeOptions ro = args.runtime;
    ro.shapes = {shape};
    ro.n_threads = pool.size();
    const auto rt = make_runtime(std::move(model), ro);
    const auto& layout = rt->layout();
    RoutingRecorder provider(rt->weights(), layout);
    const auto forward_owner = rt->make_forward(ForwardOptions{shape, args.runtime.attention}, pool, &provider);
    DeepseekForward& forward = *forward_owner;

    GenerateOptions go;
    go.max_new_tokens = args.n_predict;
    go.stop_at_eos = !args.ignore_eos;
    go.sampler = {args.temperature, args.top_k, args.top_p, args.seed,
                  tokenizer ? int64_t(tokenizer->n_vocab()) : 0};
    std::vector<float> prompt_logits;
    if (!args.logits_out.empty()) go.prompt_logits = &prompt_logits;

    std::optional<StreamingDecoder> decoder;
    if (tokenizer) decoder.emplace(*tokenizer);
    std::vector<int32_t> generated;
    const auto stats = generate(forward, prompt, go, [&](int32_t id) {
        generated.push_back(id);
        if (decoder) {
            std::fputs(decoder->push(id).c_str(), stdout);
        } else {
            std::printf("%d ", id);
        }
        std::fflush(stdout);
    });
    if (decoder) std::fputs(decoder->flush().c_str(), stdout);
    std::printf("\n");

    if (!args.logits_out.empty())
        write_npy_f32(args.logits_out, {int64_t(prompt.size()), layout.vocab}, prompt_logits.data());

    fmt::print(stderr, "\nprompt: {} tokens in {:.3f} s ({:.2f} tokens/s)\n", stats.n_prompt, stats.prompt_seconds,
               stats.prompt_tokens_per_s());
    fmt::print(stderr, "generation: {} tokens in {:.3f} s ({:.2f} tokens/s){}\n", stats.n_generated,
               stats.generate_seconds, stats.generate_tokens_per_s(), stats.stopped_at_eos ? ", stopped at EOS" : "");
    fmt::print(stderr, "generated ids: {}\n", fmt::join(generated, ","));
    report_stream_stats(rt->streamer, provider.counts(), args.stats, args.stats_json);
    if (rt->device_weights && args.stats) {
        const size_t allocator_peak = cuda::allocator_peak_bytes();
        fmt::print(stderr, "device memory: {} bytes planned under a budget of {} bytes{}\n", rt->device_plan.total_bytes,
                   rt->device_plan.budget_bytes,
                   allocator_peak ? fmt::format(", allocator peak {} bytes", allocator_peak) : std::string());
        const auto& d = rt->device_weights->stats();
        fmt::print(stderr, "device: {:.2f} GB copied to the device ({} dense, {} expert copies, {} dense copied ahead), {} "
                   "experts found on the device\n", double(d.bytes_copied) / 1e9, d.dense_copies, d.expert_copies,
                   d.dense_prefetches, d.expert_hits);
    }
    rt->finish();
    return 0;
}

}  // namespace

void register_run(CLI::App& app) {
    auto* sub = app.add_subcommand("run", "Generate text from a prompt");
    auto args = std::make_shared<RunArgs>();
    sub->add_option("-m,--model", args->model, "Model: a Hugging Face directory (config.json + safetensors) or a .gguf file")
        ->required();
    sub->add_option("-p,--prompt", args->prompt, "Prompt text");
    sub->add_option("--prompt-ids", args->prompt_ids, "Prompt as comma-separated token ids (no tokenizer needed)");
    sub->add_option("-n,--n-predict", args->n_predict, "Tokens to generate")->capture_default_str();
    sub->add_flag("--chat", args->chat, "Wrap the prompt in the model's chat template (one user turn)");
    sub->add_option("--system", args->system, "System prompt for --chat");
    sub->add_option("--temp", args->temperature, "Sampling temperature (0 = greedy)")->capture_default_str();
    sub->add_option("--top-k", args->top_k, "Keep the k most likely tokens (0 = all)")->capture_default_str();
    sub->add_option("--top-p", args->top_p, "Nucleus sampling threshold")->capture_default_str();
    sub->add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
    sub->add_option("-t,--threads", args->threads, "Compute threads (0 = all CPUs)")->capture_default_str();
    sub->add_option("-c,--context", args->context, "Maximum context (positions in the latent cache)")->capture_default_str();
    sub->add_option("-b,--batch", args->batch, "Tokens per prefill chunk")->capture_default_str();
    sub->add_option("--logits-out", args->logits_out, "Write the prompt's logits [positions, vocab] as float32 .npy");
    sub->add_flag("--ignore-eos", args->ignore_eos, "Keep generating after the end-of-sentence token");
    sub->add_flag("--stats", args->stats, "Print streaming figures: bytes read, read/compute/wait time, overlap, hit rates");
    sub->add_option("--stats-json", args->stats_json,
                    "Write every step's streaming figures as JSON lines to FILE, and last the experts each layer asked "
                    "for ({\"routing\": ...}, what `sluice plan --routing` reads)");
    add_runtime_options(*sub, args->runtime);
    add_command(app, sub, [args] { return run(*args); });
}

}  // namespace sluice::cli
