// libFuzzer entry: the input is a whole .safetensors file (length prefix, JSON header, data).
// Any outcome but a parsed header or a sluice::Error (a crash, an ASan report, another
// exception, a header whose tensors escape the file) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "core/error.hpp"
#include "formats/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    try {
        sluice::SafetensorsHeader header = sluice::parse_safetensors_header(bytes, size, "fuzz.safetensors");
        // What the parser promises the loader: every tensor lies inside the file, sized by its shape.
        for (const auto& t : header.tensors) {
            if (t.data_begin > t.data_end || header.data_offset + t.data_end > size) std::abort();
            int64_t n = t.element_bytes;
            for (int64_t d : t.shape) n *= d;
            if (static_cast<uint64_t>(n) != t.data_end - t.data_begin) std::abort();
        }
    } catch (const sluice::Error&) {
    }
    return 0;
}
