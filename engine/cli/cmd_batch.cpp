// `sluice batch`: an OpenAI batch input file through the continuous-batching scheduler into an
// OpenAI batch output file, resumable, shardable (engine/batch_job.hpp). `sluice batch-merge`:
// the shards' outputs joined in input order, checked for missing and duplicated records.
#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/batch_job.hpp"
#include "engine/cli/command.hpp"

namespace sluice::cli {

void register_batch(CLI::App& app) {
    auto* sub = app.add_subcommand("batch", "Run an OpenAI batch file (JSONL requests in, JSONL results out)");
    auto o = std::make_shared<BatchJobOptions>();
    auto shard = std::make_shared<std::string>("0/1");
    sub->add_option("-m,--model", o->model, "Model directory or .gguf file")->required();
    sub->add_option("-i,--input", o->input, "Requests: one OpenAI batch request per line")->required();
    sub->add_option("-o,--output", o->output,
                    "Results (appended as requests finish; an existing file is resumed: its requests are skipped)")
        ->required();
    sub->add_option("--shard", *shard, "Run only shard i of N (requests whose custom_id hashes to i), as i/N")
        ->capture_default_str();
    sub->add_option("--max-seqs", o->max_sequences, "Requests in flight at once")->capture_default_str();
    sub->add_option("--prefill-chunk", o->prefill_chunk, "Prompt positions a request takes per step")->capture_default_str();
    sub->add_option("--max-step-tokens", o->max_step_tokens,
                    "Most tokens in one step; each step is filled to it while prompts wait (0: max(1536, "
                    "max-seqs + prefill-chunk), else 1024, else max(512, max-seqs + prefill-chunk): the first "
                    "whose activations fit the memory budget)")
        ->capture_default_str();
    sub->add_option("-c,--context", o->context, "Most positions one request may use (prompt + output)")
        ->capture_default_str();
    sub->add_option("-t,--threads", o->threads, "Compute threads (0 = all CPUs)")->capture_default_str();
    sub->add_option("--progress-interval", o->progress_interval_seconds,
                    "Seconds between progress lines when stderr is not a terminal")
        ->capture_default_str();
    sub->add_option("--stats-json", o->stats_json, "Append one JSON line per step, and a summary line, to FILE");
    sub->add_option_function<std::string>(
        "--cache-ram", [o](const std::string& s) { o->cache_ram_bytes = parse_byte_size(s); },
        "Memory for the latent caches (default: all in memory); less spills the last layers' caches to disk");
    sub->add_option("--spill-dir", o->spill_dir, "Directory of the spill file (default: the output's)");
    add_runtime_options(*sub, o->runtime);
    add_command(app, sub, [o, shard] {
        std::tie(o->shard_index, o->shard_count) = parse_shard(*shard);
        return run_batch_job(*o);
    });

    auto* merge = app.add_subcommand("batch-merge", "Join the outputs of a sharded batch job, checking every request");
    auto input = std::make_shared<std::string>();
    auto output = std::make_shared<std::string>();
    auto parts = std::make_shared<std::vector<std::string>>();
    merge->add_option("-i,--input", *input, "The job's requests file")->required();
    merge->add_option("-o,--output", *output, "Merged results, in input order")->required();
    merge->add_option("parts", *parts, "The shards' results files")->required();
    add_command(app, merge, [input, output, parts] {
        const BatchMergeReport r = merge_batch_outputs(*input, *parts, *output);
        for (const auto& m : r.missing) fmt::print(stderr, "batch-merge: missing: {}\n", m);
        for (const auto& d : r.duplicated) fmt::print(stderr, "batch-merge: duplicated: {}\n", d);
        for (const auto& u : r.unexpected) fmt::print(stderr, "batch-merge: not in the input: {}\n", u);
        fmt::print(stderr, "batch-merge: {} of {} records written to {}; {} missing, {} duplicated, {} unexpected\n",
                   r.written, r.expected, *output, r.missing.size(), r.duplicated.size(), r.unexpected.size());
        return r.ok() ? 0 : 1;
    });
}

}  // namespace sluice::cli
