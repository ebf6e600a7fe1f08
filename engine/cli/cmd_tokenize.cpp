// `sluice tokenize`: JSON lines in, JSON lines out, for comparing tokenizers across engines.
// Encode: {"text": ...} -> {"text": ..., "ids": [...]}; --decode: {"ids": [...]} -> {"ids": ..., "text": ...}.
// A malformed line is reported with its number after every good line before it was written.
#include <fmt/format.h>

#include <filesystem>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "engine/cli/command.hpp"
#include "engine/model_loader.hpp"

namespace sluice::cli {

void register_tokenize(CLI::App& app) {
    auto* sub = app.add_subcommand("tokenize", "Encode or decode JSON lines with a model's tokenizer");
    struct Args {
        std::string model;
        bool add_special = false;
        bool decode = false;
        bool skip_special = false;
    };
    auto args = std::make_shared<Args>();
    sub->add_option("-m,--model", args->model, "Model directory, tokenizer.json or .gguf")->required();
    sub->add_flag("--add-special", args->add_special, "Prepend BOS as the model does for a plain prompt");
    sub->add_flag("--decode", args->decode, "Read {\"ids\": [...]} lines and write their text");
    sub->add_flag("--skip-special", args->skip_special, "When decoding, drop special tokens");
    add_command(app, sub, [args] {
        std::optional<Tokenizer> owned;
        std::unique_ptr<OpenModel> model;
        const Tokenizer* tok = nullptr;
        if (std::filesystem::path(args->model).extension() == ".json") {
            owned.emplace(Tokenizer::from_hf_json(args->model));
            tok = &*owned;
        } else {
            model = open_model(args->model);
            if (!model->tokenizer) fail(ErrorKind::invalid_input, "{}: no tokenizer", args->model);
            tok = &*model->tokenizer;
        }
        std::string line;
        int64_t number = 0;
        while (std::getline(std::cin, line)) {
            ++number;
            if (line.empty()) continue;
            nlohmann::json in;
            try {
                in = nlohmann::json::parse(line);
            } catch (const nlohmann::json::exception& e) {
                fail(ErrorKind::invalid_input, "stdin line {}: not JSON: {}", number, e.what());
            }
            nlohmann::json out = in;
            try {
                if (args->decode) {
                    out["text"] = tok->decode(in.at("ids").get<std::vector<int32_t>>(), args->skip_special);
                } else {
                    out["ids"] = tok->encode(in.at("text").get<std::string>(), args->add_special);
                }
            } catch (const nlohmann::json::exception& e) {
                fail(ErrorKind::invalid_input, "stdin line {}: expected {}: {}", number,
                     args->decode ? "{\"ids\": [...]}" : "{\"text\": \"...\"}", e.what());
            } catch (const Error& e) {
                fail(e.kind(), "stdin line {}: {}", number, e.what());
            }
            std::cout << out.dump() << '\n';
        }
        std::cout.flush();
        return 0;
    });
}

}  // namespace sluice::cli
