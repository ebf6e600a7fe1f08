// Each `sluice <command>` lives in its own file and registers itself on the CLI11 app; main()
// only dispatches. A command returns the process exit code; typed errors are printed by main.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sluice::cli {

// Registers a subcommand; `run` is called when it is selected on the command line.
using CommandRunner = std::function<int()>;
void add_command(CLI::App& app, CLI::App* sub, CommandRunner run);

// "16,128,512" -> {16, 128, 512}; invalid_input naming `what` for a non-number or a value <= 0.
std::vector<int64_t> parse_positive_list(const std::string& text, const char* what);

// Each command file defines one of these; main.cpp calls them all.
void register_version(CLI::App& app);
void register_synth(CLI::App& app);
void register_inspect(CLI::App& app);
void register_bench(CLI::App& app);
void register_run(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_bench_io(CLI::App& app);
void register_plan(CLI::App& app);
void register_batch(CLI::App& app);
void register_serve(CLI::App& app);

}  // namespace sluice::cli
