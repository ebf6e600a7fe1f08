// A small table of common GPUs, as their makers publish them, for `sluice plan` on hardware that
// is not here: memory, memory bandwidth, dense BF16 tensor throughput (FP32 accumulate, no
// sparsity), and the host link with the rate a pinned host-to-device copy reaches in practice.
#pragma once

#include <string>
#include <vector>

namespace sluice {

struct DeviceSpec {
    std::string name;               // "RTX 4090"
    double vram_bytes = 0;
    double memory_bytes_per_s = 0;  // peak memory bandwidth
    double bf16_flops = 0;          // peak dense BF16 tensor FLOP/s
    int pcie_generation = 0;        // x16 link
    double pcie_bytes_per_s = 0;    // pinned host-to-device copies in practice (~80% of the link)
    std::string source;             // where the figures come from
};

const std::vector<DeviceSpec>& device_table();
// By name, case- and space-insensitive ("rtx4090", "H100"); invalid_input listing the table otherwise.
const DeviceSpec& find_device(const std::string& name);

}  // namespace sluice
