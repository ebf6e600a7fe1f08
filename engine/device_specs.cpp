#include "engine/device_specs.hpp"

#include <cctype>

#include "core/error.hpp"

namespace sluice {

namespace {
constexpr double GB = 1e9, TFLOP = 1e12, GiB = double(1ull << 30);

std::string key(const std::string& s) {
    std::string k;
    for (char c : s)
        if (std::isalnum(static_cast<unsigned char>(c))) k += char(std::tolower(static_cast<unsigned char>(c)));
    return k;
}
}  // namespace

// PCIe x16 practical rates: 4.0 is 31.5 GB/s raw, pinned cudaMemcpy reaches ~25; 5.0 is 63 raw, ~50.
const std::vector<DeviceSpec>& device_table() {
    static const std::vector<DeviceSpec> table = {
        {"RTX 4090", 24 * GiB, 1008 * GB, 165.2 * TFLOP, 4, 25 * GB, "NVIDIA Ada GPU architecture whitepaper (AD102)"},
        {"RTX 3090", 24 * GiB, 936 * GB, 71 * TFLOP, 4, 25 * GB, "NVIDIA Ampere GA102 GPU architecture whitepaper"},
        {"A100", 80 * GiB, 2039 * GB, 312 * TFLOP, 4, 25 * GB, "NVIDIA A100 80GB SXM datasheet"},
        {"H100", 80 * GiB, 3350 * GB, 989 * TFLOP, 5, 50 * GB, "NVIDIA H100 SXM5 datasheet"},
        {"H200", 141 * 1e9, 4800 * GB, 989 * TFLOP, 5, 50 * GB, "NVIDIA H200 SXM datasheet"},
    };
    return table;
}

const DeviceSpec& find_device(const std::string& name) {
    std::string known;
    for (const auto& d : device_table()) {
        if (key(d.name) == key(name)) return d;
        known += (known.empty() ? "" : ", ") + d.name;
    }
    fail(ErrorKind::invalid_input, "--gpu '{}' is not in the table ({}); give --gpu-gemm TFLOP/s --gpu-bw GB/s --vram SIZE",
         name, known);
}

}  // namespace sluice
