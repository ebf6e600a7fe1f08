// Where the default --ram comes from: the smallest of the host's available memory and the
// memory limit of the cgroup the process runs in (cgroup v1 memory.limit_in_bytes, v2 memory.max,
// found through /proc/self/cgroup and /proc/self/mountinfo, the process's own group and every
// group above it), so a container, a Slurm job (--mem) or a pod is not OOM-killed by a plan made
// for the whole host. Every path is read under `root` ("/" in use; a fixture tree in tests).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace sluice {

// A cgroup memory limit and how much of it is free.
struct CgroupMemoryLimit {
    uint64_t limit_bytes = 0;
    uint64_t available_bytes = 0;  // the limit less what the group uses that cannot be reclaimed
    std::string file;              // e.g. /sys/fs/cgroup/memory/slurm/uid_0/job_7/memory.limit_in_bytes
};

// The tightest memory limit over the process's cgroup and its ancestors, on the v1 memory
// hierarchy and the v2 unified one; nullopt when no group limits memory (or there are no cgroups).
// "Tightest" is the least available: a group's available memory is its limit less its usage
// (less the inactive file pages, which the kernel reclaims before it kills).
std::optional<CgroupMemoryLimit> cgroup_memory_limit(const std::filesystem::path& root = "/");

// MemAvailable from /proc/meminfo, or 0 when it cannot be read.
uint64_t available_ram_bytes(const std::filesystem::path& root = "/");

// The default budget and where it came from, for the line every command that plans prints.
struct MemoryBudget {
    uint64_t bytes = 0;
    std::string source;
};
// `fraction` of the smaller of MemAvailable and the cgroup's available memory.
MemoryBudget default_memory_budget(double fraction, const std::filesystem::path& root = "/");

}  // namespace sluice
