// `sluice synth -o DIR`: writes a DeepSeek-V3-architecture HF model directory with random
// weights and the real DeepSeek-V3 tokenizer, so everything runs without a download.
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <unistd.h>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/cli/command.hpp"
#include "engine/synth.hpp"

namespace sluice::cli {

namespace {

std::filesystem::path self_executable() {
    std::error_code ec;
    auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::current_path() : path;
}

}  // namespace

void register_synth(CLI::App& app) {
    auto* sub = app.add_subcommand("synth", "Write a random-weight DeepSeek-V3-architecture model (HF directory)");
    struct Args {
        std::string output;
        std::string preset = "small";
        std::optional<int> layers;
        std::string dtype = "bf16";
        uint64_t seed = 0;
        std::string tokenizer;
        bool no_tokenizer = false;
        double shard_gb = 4.0;
        int mtp_layers = 0;
    };
    auto args = std::make_shared<Args>();
    sub->add_option("-o,--output", args->output, "Directory to write (created if needed)")->required();
    sub->add_option("--preset", args->preset, "tiny | small (default) | v3 (DeepSeek-V3 671B shapes)")
        ->check(CLI::IsMember({"tiny", "small", "v3"}));
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
    add_command(app, sub, [args] {
        SynthOptions options;
        options.config = synth_preset(args->preset);
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
                   args->output, args->preset, options.config.n_layers, summary.n_tensors, summary.n_parameters / 1e6,
                   summary.data_bytes / 1e6, summary.n_shards, seconds,
                   options.tokenizer_dir ? ", tokenizer from " + options.tokenizer_dir->string() : std::string(", no tokenizer"));
        return 0;
    });
}

}  // namespace sluice::cli
