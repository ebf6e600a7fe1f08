// libFuzzer entry: the input is a config.json. ModelConfig::parse must either return a config
// that passes validate() or throw sluice::Error; nothing else.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.hpp"
#include "formats/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        sluice::ModelConfig config =
            sluice::ModelConfig::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
        config.validate("fuzz.json");
        (void)config.to_json().dump();
    } catch (const sluice::Error&) {
    }
    return 0;
}
