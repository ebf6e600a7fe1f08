// libFuzzer entry: the input is a whole GGUF file held in memory. Any outcome but a parsed,
// validated file or a sluice::Error (a crash, an ASan/UBSan report, another exception, a
// validated tensor whose bytes escape the input) is a bug. A validated file is also run through
// the deepseek2 hparams + tensor mapping, which must likewise only throw sluice::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "core/error.hpp"
#include "formats/gguf.hpp"
#include "formats/gguf_deepseek2.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace sluice::gguf;
    try {
        MemoryByteSource source(std::span<const uint8_t>(data, size));
        GgufFile file = parse(source, "fuzz.gguf");
        validate(file);
        for (const auto& t : file.tensors) {
            if (t.extent.offset > size || t.extent.length > size - t.extent.offset) std::abort();
            if (t.extent.offset % file.alignment != 0) std::abort();
            if (t.extent.length != static_cast<uint64_t>(sluice::row_bytes(t.type, t.ne[0])) *
                                        static_cast<uint64_t>(t.ne[1] * t.ne[2] * t.ne[3]))
                std::abort();
        }
        std::vector<GgufFile> one;
        one.push_back(std::move(file));
        GgufModel model = GgufModel::from_splits(std::move(one));
        const Deepseek2Hparams h = read_deepseek2_hparams(model.metadata());
        const Deepseek2Tensors tensors = map_deepseek2_tensors(model, h);
        for (const auto& layer : tensors.layers)
            if (layer.ffn_down_exps != nullptr) {
                const auto x = expert_extent(*layer.ffn_down_exps, static_cast<uint32_t>(layer.ffn_down_exps->ne[2] - 1));
                if (x.offset + x.length != layer.ffn_down_exps->extent.offset + layer.ffn_down_exps->extent.length)
                    std::abort();
            }
    } catch (const sluice::Error&) {
    }
    return 0;
}
