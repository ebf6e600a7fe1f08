// `sluice synth -o DIR` writes a DeepSeek-V3-architecture HF model directory with random
// weights and the real DeepSeek-V3 tokenizer, so everything runs without a download;
// `sluice synth -o FILE.gguf` writes the same family as one llama.cpp deepseek2 GGUF with
// random quantised blocks, at disk speed (real V3 dimensions by default).
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <unistd.h>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/cli/command.hpp"
#include "engine/synth.hpp"
#include "engine/synth_gguf.hpp"

namespace sluice::cli {

namespace {

std::filesystem::path self_executable() {
    std::error_code ec;
    auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::current_path() : path;
}

bool is_gguf_path(const std::string& path) {
    return path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
}

}  // namespace

void register_synth(CLI::App& app) {
    auto* sub = app.add_subcommand("synth", "Write a random-weight DeepSeek-V3-architecture model (HF directory, or one GGUF file when -o ends in .gguf)");
    struct Args {
        std::string output;
        std::optional<std::string> preset;
        std::optional<int> layers;
        std::optional<int> dense_layers;
        std::optional<int64_t> experts;
        std::string expert_type = "q4_k", dense_type = "q4_k", embed_type = "q4_k", head_type = "q6_k";
        int threads = 0;
        bool quiet = false;
        std::string dtype = "bf16";
        uint64_t seed = 0;
        std::string tokenizer;
        bool no_tokenizer = false;
        double shard_gb = 4.0;
        int mtp_layers = 0;
    };
    auto args = std::make_shared<Args>();
    sub->add_option("-o,--output", args->output, "Directory to write (created if needed), or a .gguf file")->required();
    sub->add_option("--preset", args->preset,
                    "tiny | small | demo (V3's attention and vocabulary, 8 layers of 128 narrower experts: 3.6 GB at "
                    "Q4_K) | v3 (DeepSeek-V3 671B shapes); default small for a directory, v3 for .gguf")
        ->check(CLI::IsMember({"tiny", "small", "demo", "v3"}));
    sub->add_option("--layers", args->layers, "Number of main layers (overrides the preset)")->check(CLI::PositiveNumber);
    sub->add_option("--dtype", args->dtype, "Weight type: f32 or bf16 (default)")->check(CLI::IsMember({"f32", "bf16"}));
    sub->add_option("--seed", args->seed, "Random seed (default 0)");
    sub->add_option("--tokenizer", args->tokenizer,
                    "Directory with the DeepSeek-V3 tokenizer.json (default: shared/models/deepseek-v3-tokenizer)");
    sub->add_flag("--no-tokenizer", args->no_tokenizer, "Write no tokenizer files");
    sub->add_option("--mtp-layers", args->mtp_layers,
                    "MTP modules after the main stack (default 0; DeepSeek-V3 ships 1, a full MoE layer)")
        ->check(CLI::NonNegativeNumber);
    sub->add_option("--shard-gb", args->shard_gb, "Largest shard in GB (default 4)")->check(CLI::PositiveNumber);
    const auto types = CLI::IsMember({"f32", "f16", "bf16", "q4_0", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"},
                                     CLI::ignore_case);
    sub->add_option("--dense-layers", args->dense_layers,
                    "GGUF: leading dense layers (first_k_dense_replace; default min(preset's, layers - 1))")
        ->check(CLI::NonNegativeNumber);
    sub->add_option("--experts", args->experts, "GGUF: routed experts per MoE layer (overrides the preset)")
        ->check(CLI::PositiveNumber);
    sub->add_option("--expert-type", args->expert_type, "GGUF: routed-expert type (default q4_k)")->check(types);
    sub->add_option("--dense-type", args->dense_type,
                    "GGUF: attention, shared-expert and dense-MLP type (default q4_k; attn_k_b falls back to q8_0 "
                    "when its 128-wide rows do not fit)")
        ->check(types);
    sub->add_option("--embed-type", args->embed_type, "GGUF: token_embd type (default q4_k)")->check(types);
    sub->add_option("--head-type", args->head_type, "GGUF: output head type (default q6_k)")->check(types);
    sub->add_option("--threads", args->threads, "GGUF: generator threads (default: all CPUs)")->check(CLI::NonNegativeNumber);
    sub->add_flag("--quiet", args->quiet, "GGUF: no progress on stderr");
    add_command(app, sub, [args] {
        if (is_gguf_path(args->output)) {
            GgufSynthOptions options;
            const std::string preset = args->preset.value_or("v3");
            options.config = synth_gguf_config(preset, args->layers, args->dense_layers, args->experts);
            const int n_layers = options.config.n_layers;
            options.output_path = args->output;
            options.expert_type = parse_synth_dtype(args->expert_type);
            options.dense_type = parse_synth_dtype(args->dense_type);
            options.embed_type = parse_synth_dtype(args->embed_type);
            options.head_type = parse_synth_dtype(args->head_type);
            options.seed = args->seed;
            options.n_threads = args->threads;
            options.print_progress = !args->quiet;
            options.model_name = std::filesystem::path(args->output).stem().string();
            if (args->no_tokenizer) fail(ErrorKind::invalid_input, "synth: a GGUF needs a tokenizer (no --no-tokenizer)");
            if (!args->tokenizer.empty()) {
                options.tokenizer_dir = args->tokenizer;
            } else {
                auto found = find_default_tokenizer(self_executable().parent_path());
                if (!found)
                    fail(ErrorKind::invalid_input,
                         "synth: no DeepSeek-V3 tokenizer found (shared/models/deepseek-v3-tokenizer); pass --tokenizer DIR");
                options.tokenizer_dir = *found;
            }
            const GgufSynthSummary summary = write_synthetic_gguf(options);
            fmt::print("wrote {}: preset {}, {} layers ({} dense), {} experts {}, {} tensors, {:.3f} B parameters, {:.2f} GB "
                       "in {:.1f} s ({:.2f} GB/s)\n",
                       args->output, preset, n_layers, options.config.first_k_dense_replace,
                       options.config.n_routed_experts, dtype_name(options.expert_type), summary.n_tensors,
                       summary.n_parameters / 1e9, summary.file_bytes / 1e9, summary.seconds,
                       summary.seconds > 0 ? summary.file_bytes / 1e9 / summary.seconds : 0.0);
            return 0;
        }
        if (args->dense_layers || args->experts)
            fail(ErrorKind::invalid_input, "synth: --dense-layers / --experts apply to .gguf output only");
        SynthOptions options;
        const std::string preset = args->preset.value_or("small");
        options.config = synth_preset(preset);
        if (args->layers) {
            options.config.n_layers = *args->layers;
            // With fewer layers than the dense prefix every layer is dense; keep the config honest.
            options.config.first_k_dense_replace = std::min(options.config.first_k_dense_replace, *args->layers);
        }
        // sluice decodes without MTP; writing it is opt-in because at v3 size it is 11 GB.
        options.config.num_nextn_predict_layers = args->mtp_layers;
        options.output_dir = args->output;
        options.weight_dtype = args->dtype == "f32" ? "F32" : "BF16";
        options.seed = args->seed;
        options.max_shard_bytes = static_cast<uint64_t>(args->shard_gb * 1e9);
        if (!args->no_tokenizer) {
            if (!args->tokenizer.empty()) {
                options.tokenizer_dir = args->tokenizer;
            } else {
                options.tokenizer_dir = find_default_tokenizer(self_executable().parent_path());
                if (!options.tokenizer_dir)
                    fail(ErrorKind::invalid_input,
                         "synth: no DeepSeek-V3 tokenizer found (shared/models/deepseek-v3-tokenizer); pass --tokenizer DIR "
                         "or --no-tokenizer");
            }
        }
        const auto start = std::chrono::steady_clock::now();
        const SynthSummary summary = write_synthetic_model(options);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        fmt::print("wrote {}: preset {}, {} layers, {} tensors, {:.1f} M parameters, {:.1f} MB in {} shard(s), {:.1f} s{}\n",
                   args->output, preset, options.config.n_layers, summary.n_tensors, summary.n_parameters / 1e6,
                   summary.data_bytes / 1e6, summary.n_shards, seconds,
                   options.tokenizer_dir ? ", tokenizer from " + options.tokenizer_dir->string() : std::string(", no tokenizer"));
        return 0;
    });
}

}  // namespace sluice::cli
