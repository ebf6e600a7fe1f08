// `sluice inspect <model>`: architecture, hyperparameters, tensor types, bytes per layer (dense
// part vs routed experts), bytes one decoded token reads, MLA cache bytes per token. Reads
// headers only. --json prints the same as one JSON object.
#include <fmt/format.h>

#include "engine/cli/command.hpp"
#include "engine/model_loader.hpp"
#include "engine/model_report.hpp"

namespace sluice::cli {

void register_inspect(CLI::App& app) {
    auto* sub = app.add_subcommand("inspect", "Describe a model: hyperparameters, tensor types, bytes per layer and token");
    struct Args {
        std::string model;
        bool json = false;
    };
    auto args = std::make_shared<Args>();
    sub->add_option("model", args->model, "Model directory (config.json + safetensors) or .gguf file")->required();
    sub->add_flag("--json", args->json, "Print one JSON object");
    add_command(app, sub, [args] {
        const auto model = open_model(args->model);
        const auto report = make_model_report(model->layout, model->plan);
        if (args->json) {
            auto j = model_report_json(model->layout, report);
            j["path"] = args->model;
            j["format"] = model->format;
            fmt::print("{}\n", j.dump(2));
        } else {
            fmt::print("{} ({})\n{}", args->model, model->format, model_report_text(model->layout, report));
        }
        return 0;
    });
}

}  // namespace sluice::cli
