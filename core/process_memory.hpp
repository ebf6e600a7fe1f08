// This process's memory as the kernel counts it (/proc/self/status): what it holds now (VmRSS),
// the most it has held (VmHWM), what it maps (VmSize). For the planner's "held before" figure and
// the reports that set the plan beside what the OS saw.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>

namespace sluice {

// A "Vm...:" field of /proc/self/status in bytes ("VmRSS", "VmHWM", "VmSize"), 0 if unreadable.
inline uint64_t process_memory_bytes(std::string_view field) {
    std::ifstream in("/proc/self/status");
    std::string key;
    while (in >> key) {
        uint64_t kib = 0;
        if (key.size() == field.size() + 1 && key.compare(0, field.size(), field) == 0 && key.back() == ':' && in >> kib)
            return kib * 1024;
        std::getline(in, key);
    }
    return 0;
}

}  // namespace sluice
