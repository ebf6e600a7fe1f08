// Bad models on the command line: each gives one line on stderr naming the file and the
// tensor (or field), and a non-zero exit, before any weight is used.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "formats/safetensors.hpp"
#include "tests/test_data.hpp"

using namespace sluice;
using sluice::test::fixture;
namespace fs = std::filesystem;

namespace {

struct Outcome {
    int exit_code;
    std::string stderr_text;
};

Outcome inspect(const fs::path& model) {
    const char* bin = std::getenv("SLUICE_BIN");
    REQUIRE_MESSAGE(bin, "SLUICE_BIN is not set");
    const fs::path err = fs::temp_directory_path() / "sluice_bad_model.err";
    const std::string cmd = std::string(bin) + " inspect '" + model.string() + "' >/dev/null 2>'" + err.string() + "'";
    const int status = std::system(cmd.c_str());
    std::ifstream in(err);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

// hf_tiny_v3 with its tensors rewritten through `edit` (drop one, reshape one).
fs::path broken_copy(const std::string& tag, const std::string& drop, const std::string& reshape) {
    const fs::path dir = fs::temp_directory_path() / ("sluice_bad_model_" + tag);
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy_file(fixture("hf_tiny_v3") + "/config.json", dir / "config.json");
    const auto src = SafetensorsCheckpoint::open(fixture("hf_tiny_v3"));
    std::vector<SafetensorsTensorSpec> specs;
    std::vector<const SafetensorsTensor*> kept;
    for (const auto& t : src.tensors()) {
        if (t.name == drop) continue;
        SafetensorsTensorSpec s{t.name, t.dtype_name, t.shape};
        if (t.name == reshape) s.shape = {t.shape[1], t.shape[0]};  // same bytes, transposed shape
        specs.push_back(s);
        kept.push_back(&t);
    }
    SafetensorsWriter w(dir / "model.safetensors", specs);
    for (const auto* t : kept) {
        const auto bytes = src.read_tensor(*t);
        w.append(bytes);
    }
    w.finish();
    return dir;
}

}  // namespace

TEST_CASE("a missing tensor is named with the checkpoint, exit status 2") {
    const auto r = inspect(broken_copy("missing", "model.layers.1.mlp.experts.3.up_proj.weight", ""));
    CAPTURE(r.stderr_text);
    CHECK(r.exit_code == 2);
    CHECK(r.stderr_text.find("missing tensor 'model.layers.1.mlp.experts.3.up_proj.weight'") != std::string::npos);
}

TEST_CASE("a tensor of the wrong shape is named with both shapes") {
    const auto r = inspect(broken_copy("shape", "", "model.layers.2.self_attn.q_b_proj.weight"));
    CAPTURE(r.stderr_text);
    CHECK(r.exit_code == 2);
    CHECK(r.stderr_text.find("'model.layers.2.self_attn.q_b_proj.weight' has shape") != std::string::npos);
    CHECK(r.stderr_text.find("expected") != std::string::npos);
}

TEST_CASE("a directory without config.json, or with an unknown model_type, is refused by name") {
    const fs::path dir = fs::temp_directory_path() / "sluice_bad_model_noconfig";
    fs::remove_all(dir);
    fs::create_directories(dir);
    auto r = inspect(dir);
    CHECK(r.exit_code == 2);
    CHECK(r.stderr_text.find("config.json") != std::string::npos);
    std::ofstream(dir / "config.json") << R"({"model_type": "llama", "hidden_size": 64})";
    r = inspect(dir);
    CAPTURE(r.stderr_text);
    CHECK(r.exit_code == 2);
    CHECK(r.stderr_text.find("model_type") != std::string::npos);
    CHECK(r.stderr_text.find("llama") != std::string::npos);
}

TEST_CASE("a truncated safetensors file is refused naming the file") {
    const fs::path dir = broken_copy("truncated", "", "");
    fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 100);
    const auto r = inspect(dir);
    CAPTURE(r.stderr_text);
    CHECK(r.exit_code == 2);
    CHECK(r.stderr_text.find("model.safetensors") != std::string::npos);
}
