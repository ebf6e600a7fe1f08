// What the CUDA runtime says about the devices. Safe to call in every build: without CUDA
// support compiled in, or without a usable device (no driver returns an error, not 0 devices),
// it reports no device and the reason.
#pragma once

#include <string>
#include <vector>

namespace sluice::cuda {

struct DeviceInfo {
    int index = 0;
    std::string name;
    int sm_major = 0;
    int sm_minor = 0;
    size_t total_bytes = 0;
    int n_multiprocessors = 0;
};

struct DeviceQuery {
    bool compiled = false;        // CUDA support built into this binary
    std::vector<DeviceInfo> devices;
    std::string reason;           // why there is no device, when devices is empty
};

DeviceQuery query_devices();

}  // namespace sluice::cuda
