#include "engine/model_loader.hpp"

#include <filesystem>

#include "core/error.hpp"
#include "engine/gguf_source.hpp"
#include "engine/safetensors_source.hpp"

namespace sluice {

namespace fs = std::filesystem;

namespace {

// tokenizer.json beside the model (HF layout), if any.
void open_hf_tokenizer(const fs::path& dir, OpenModel& m) {
    const fs::path tokenizer_json = dir / "tokenizer.json";
    if (!fs::exists(tokenizer_json)) return;
    m.tokenizer.emplace(Tokenizer::from_hf_json(tokenizer_json.string()));
    const fs::path tokenizer_config = dir / "tokenizer_config.json";
    if (fs::exists(tokenizer_config)) m.chat_template = chat_template_from_config_file(tokenizer_config.string());
}

std::unique_ptr<OpenModel> open_hf(const fs::path& dir) {
    auto m = std::make_unique<OpenModel>();
    m->path = dir.string();
    m->format = "safetensors";
    m->config = ModelConfig::load(dir);
    m->layout = ModelLayout::from(m->config);
    m->source = std::make_unique<SafetensorsSource>(SafetensorsCheckpoint::open(dir));
    m->plan = plan_hf_model(m->layout, *m->source);
    m->layout.split_kv_b = plan_has_role(m->plan, WeightRole::k_b);
    open_hf_tokenizer(dir, *m);
    return m;
}

std::unique_ptr<OpenModel> open_gguf_model(const fs::path& file) {
    auto m = std::make_unique<OpenModel>();
    m->path = file.string();
    m->format = "gguf";
    auto source = std::make_unique<GgufSource>(gguf::open_gguf(file.string()));
    m->config = model_config_from_gguf(source->model());
    m->layout = ModelLayout::from(m->config);
    m->plan = plan_gguf_model(m->layout, *source);
    m->layout.split_kv_b = plan_has_role(m->plan, WeightRole::k_b);
    const auto md = source->model().metadata();
    if (md.has("tokenizer.ggml.tokens")) {
        const std::string pre = md.has("tokenizer.ggml.pre") ? md.get_string("tokenizer.ggml.pre") : "";
        // A vocabulary whose pre-tokenizer sluice does not implement still runs from ids.
        if (pre == "deepseek-v3" || pre == "deepseek-v3-llm") m->tokenizer.emplace(tokenizer_from_gguf(source->model()));
        if (md.has("tokenizer.chat_template"))
            m->chat_template = chat_template_from_text(md.get_string("tokenizer.chat_template"));
    }
    m->source = std::move(source);
    return m;
}

}  // namespace

std::unique_ptr<OpenModel> open_model(const std::string& path) {
    const fs::path p(path);
    std::error_code ec;
    if (!fs::exists(p, ec)) fail(ErrorKind::invalid_input, "{}: no such file or directory", path);
    if (fs::is_directory(p)) {
        if (!fs::exists(p / "config.json"))
            fail(ErrorKind::invalid_input, "{}: missing config.json (expected a Hugging Face model directory)", path);
        return open_hf(p);
    }
    if (p.extension() == ".gguf") return open_gguf_model(p);
    fail(ErrorKind::invalid_input, "{}: not a model directory (config.json + safetensors) or a .gguf file", path);
}

std::unique_ptr<LoadedModel> load_model(const std::string& path) {
    auto loaded = std::make_unique<LoadedModel>();
    loaded->open = open_model(path);
    loaded->weights = load_resident(loaded->open->layout, loaded->open->plan, *loaded->open->source);
    loaded->provider = std::make_unique<ResidentWeights>(loaded->weights);
    return loaded;
}

}  // namespace sluice
