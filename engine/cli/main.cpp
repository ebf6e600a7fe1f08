// sluice: the command-line entry. Dispatches to the registered subcommands and turns a typed
// error into one line on stderr and a non-zero exit.
#include <cstdio>
#include <sstream>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/cli/command.hpp"

namespace sluice::cli {

namespace {
std::vector<std::pair<CLI::App*, CommandRunner>>& registry() {
    static std::vector<std::pair<CLI::App*, CommandRunner>> commands;
    return commands;
}
}  // namespace

void add_command(CLI::App&, CLI::App* sub, CommandRunner run) { registry().emplace_back(sub, std::move(run)); }

std::vector<int64_t> parse_positive_list(const std::string& text, const char* what) {
    std::vector<int64_t> out;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        try {
            out.push_back(std::stoll(item));
        } catch (const std::exception&) {
            fail(ErrorKind::invalid_input, "{}: '{}' is not a number", what, item);
        }
        if (out.back() <= 0) fail(ErrorKind::invalid_input, "{}: {} must be positive", what, out.back());
    }
    return out;
}

}  // namespace sluice::cli

int main(int argc, char** argv) {
    using namespace sluice;
    CLI::App app{"sluice: layer-streaming executor for DeepSeek-V3-family models"};
    app.require_subcommand(1);
    app.set_version_flag("--version", SLUICE_VERSION);
    cli::register_version(app);
    cli::register_synth(app);
    cli::register_inspect(app);
    cli::register_run(app);
    cli::register_tokenize(app);
    cli::register_perplexity(app);
    cli::register_bench(app);
    cli::register_bench_io(app);
    cli::register_plan(app);
    cli::register_batch(app);
    cli::register_serve(app);
    try {
        // Option callbacks (--ram, --resident, --attention ...) throw typed errors while parsing.
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        for (auto& [sub, run] : cli::registry())
            if (sub->parsed()) return run();
    } catch (const Error& e) {
        fmt::print(stderr, "sluice: {}: {}\n", error_kind_name(e.kind()), e.what());
        return e.kind() == ErrorKind::invalid_input || e.kind() == ErrorKind::unsupported ? 2 : 1;
    } catch (const std::bad_alloc&) {
        fmt::print(stderr, "sluice: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluice: {}\n", e.what());
        return 1;
    }
    return 0;
}
