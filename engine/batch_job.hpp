// `sluice batch`: an OpenAI batch input file in, its output file out, through the continuous
// batching scheduler. Lines that cannot be served get an error record at once; finished requests
// are appended and made durable step by step; a restart with the same output file skips the
// records already there; SIGINT / SIGTERM end the job after the current step. `--shard i/N` keeps
// the requests whose custom_id hashes to i (formats/openai_batch.hpp), so N processes (a Slurm
// array, a Kubernetes indexed job) split one input; batch_merge joins and checks their outputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/runtime.hpp"

namespace sluice {

struct BatchJobOptions {
    std::string model;
    std::string input;
    std::string output;
    int shard_index = 0;
    int shard_count = 1;
    int max_sequences = 64;         // requests in flight (latent caches)
    int64_t prefill_chunk = 256;    // prompt positions per sequence per step
    int64_t max_step_tokens = 0;    // 0: batch_step_choices' first that fits the budget (engine/batch_memory.hpp)
    int64_t context = 4096;         // most positions a request may use (prompt + output)
    int threads = 0;
    double progress_interval_seconds = 30;
    int progress_terminal = -1;     // -1: when stderr is a terminal
    std::string stats_json;         // one JSON line per step, then a summary line
    uint64_t cache_ram_bytes = 0;   // memory for latent caches; 0: all in memory. Less spills the
                                    // last layers' caches to disk (engine/spilled_latent_cache)
    std::string spill_dir;          // where the spill file goes ("": beside the output)
    RuntimeOptions runtime;
};

// Runs the job; returns the process exit code (0 done, 128 + signal when interrupted).
int run_batch_job(const BatchJobOptions& options);

// "i/N" -> (i, N), checked.
std::pair<int, int> parse_shard(const std::string& text);

struct BatchMergeReport {
    int64_t expected = 0;                 // records the input calls for
    int64_t written = 0;
    std::vector<std::string> missing;     // "line N (custom_id X)"
    std::vector<std::string> duplicated;  // record ids seen more than once
    std::vector<std::string> unexpected;  // record ids no input line calls for
    bool ok() const { return missing.empty() && duplicated.empty() && unexpected.empty(); }
};

// Joins shard outputs into one file in input order, checking that every line of `input` has
// exactly one record.
BatchMergeReport merge_batch_outputs(const std::string& input, const std::vector<std::string>& parts,
                                     const std::string& output);

}  // namespace sluice
