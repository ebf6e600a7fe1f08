// `sluice perplexity`: perplexity of a model over a text file, scored like llama.cpp's tool
// (see engine/perplexity.hpp) so quantisations can be compared with each other and with it.
#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "engine/cli/command.hpp"
#include "engine/runtime.hpp"
#include "engine/perplexity.hpp"

namespace sluice::cli {

void register_perplexity(CLI::App& app) {
    auto* sub = app.add_subcommand("perplexity", "Perplexity of a model over a text file");
    struct Args {
        std::string model, file;
        int64_t ctx = 512;
        int64_t chunks = 0;
        int threads = 0;
        int64_t batch = 128;
        RuntimeOptions runtime;
    };
    auto args = std::make_shared<Args>();
    sub->add_option("-m,--model", args->model, "Model directory or .gguf file")->required();
    sub->add_option("-f,--file", args->file, "UTF-8 text file")->required();
    sub->add_option("--ctx", args->ctx, "Tokens per chunk")->capture_default_str();
    sub->add_option("--chunks", args->chunks, "Score at most this many chunks (0 = all)")->capture_default_str();
    sub->add_option("-t,--threads", args->threads, "Compute threads (0 = all CPUs)")->capture_default_str();
    sub->add_option("-b,--batch", args->batch, "Tokens per forward chunk")->capture_default_str();
    add_runtime_options(*sub, args->runtime);
    add_command(app, sub, [args] {
        std::ifstream in(args->file, std::ios::binary);
        if (!in) fail(ErrorKind::io, "{}: cannot open", args->file);
        std::stringstream text;
        text << in.rdbuf();
        ThreadPool pool(args->threads);
        RuntimeOptions ro = args->runtime;
        // One sequence of --ctx positions, all of whose logits are kept (engine/perplexity.cpp).
        const RunShape shape{1, args->ctx, args->batch, args->ctx};
        ro.shapes = {shape};
        ro.n_threads = pool.size();
        const auto rt = make_runtime(args->model, ro);
        if (!rt->model->tokenizer)
            fail(ErrorKind::invalid_input, "{}: perplexity needs the model's tokenizer", args->model);
        const auto tokens = rt->model->tokenizer->encode(text.str(), false);
        const auto forward_owner = rt->make_forward(ForwardOptions{shape, ro.attention}, pool);
        DeepseekForward& forward = *forward_owner;
        fmt::print(stderr, "{}: {} tokens, {} chunks of {}\n", args->file, tokens.size(),
                   int64_t(tokens.size()) / args->ctx, args->ctx);
        const auto r = perplexity(forward, tokens, args->ctx, args->chunks, [](int64_t c, double ppl) {
            fmt::print(stderr, "[{}] {:.4f}\n", c + 1, ppl);
        });
        fmt::print("perplexity: {:.4f} over {} tokens in {} chunks ({:.1f} s, {:.1f} tokens/s)\n", r.perplexity,
                   r.n_scored, r.n_chunks, r.seconds, double(r.n_chunks * args->ctx) / r.seconds);
        rt->finish();
        return 0;
    });
}

}  // namespace sluice::cli
