// The default --ram comes from where the process runs: the cgroup limit (v1 or v2, the process's own
// group or a tighter ancestor, found through /proc/self/cgroup and mountinfo) when it leaves less
// than the host's MemAvailable. Fixture trees (tests/data/cgroup, one per setup) for the reader;
// then a real cgroup, where this machine lets a test make one.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <fmt/format.h>

#include "engine/memory_limit.hpp"

using namespace sluice;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t GiB = uint64_t(1) << 30;

fs::path fixture(const std::string& name) {
    const char* d = std::getenv("SLUICE_TEST_DATA");
    REQUIRE_MESSAGE(d, "SLUICE_TEST_DATA is not set");
    return fs::path(d) / "cgroup" / name;
}

}  // namespace

TEST_CASE("cgroup v1: the process's own group's limit, less what it uses that cannot be reclaimed") {
    const auto limit = cgroup_memory_limit(fixture("v1"));
    REQUIRE(limit);
    CHECK(limit->limit_bytes == 8 * GiB);
    CHECK(limit->available_bytes == 8 * GiB - (GiB - GiB / 2));  // usage 1 GiB, of which 0.5 GiB inactive file pages
    CHECK(limit->file == "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes");
    const auto budget = default_memory_budget(0.85, fixture("v1"));
    CHECK(budget.bytes == uint64_t(double(limit->available_bytes) * 0.85));
    CHECK(budget.source.find("cgroup limit /sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes") !=
          std::string::npos);
}

TEST_CASE("cgroup v2 in a container with its own namespace: memory.max of the mounted root") {
    const auto limit = cgroup_memory_limit(fixture("v2"));
    REQUIRE(limit);
    CHECK(limit->limit_bytes == 4 * GiB);
    CHECK(limit->available_bytes == 4 * GiB - GiB / 8);
    CHECK(limit->file == "/sys/fs/cgroup/memory.max");
}

TEST_CASE("cgroup v2 with memory.max 'max' everywhere: no limit, the budget is MemAvailable's") {
    CHECK_FALSE(cgroup_memory_limit(fixture("v2_unlimited")));
    const auto budget = default_memory_budget(0.85, fixture("v2_unlimited"));
    CHECK(budget.bytes == uint64_t(double(30 * GiB) * 0.85));
    CHECK(budget.source.find("MemAvailable") != std::string::npos);
}

TEST_CASE("Slurm's job limit three levels above the task is found by walking up the v2 tree") {
    const auto limit = cgroup_memory_limit(fixture("v2_slurm_nested"));
    REQUIRE(limit);
    CHECK(limit->limit_bytes == 2 * GiB);
    CHECK(limit->available_bytes == 2 * GiB - GiB / 2);
    CHECK(limit->file == "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_42/memory.max");
    CHECK(default_memory_budget(0.85, fixture("v2_slurm_nested")).bytes < 2 * GiB);  // not 85% of 250 GiB
}

TEST_CASE("Docker without a cgroup namespace: the mounted root is the process's own group") {
    const auto limit = cgroup_memory_limit(fixture("v1_docker"));
    REQUIRE(limit);
    CHECK(limit->limit_bytes == 3 * GiB);
    CHECK(limit->available_bytes == 2 * GiB);
    CHECK(limit->file == "/sys/fs/cgroup/memory/memory.limit_in_bytes");
}

TEST_CASE("an ancestor whose limit leaves less room than the group's own is the one that counts") {
    const auto limit = cgroup_memory_limit(fixture("v1_parent_tighter"));
    REQUIRE(limit);
    CHECK(limit->limit_bytes == 16 * GiB);
    CHECK(limit->available_bytes == 4 * GiB);  // 16 GiB less the 12 its children use; the job's own leaves 7
    CHECK(limit->file == "/sys/fs/cgroup/memory/batch/memory.limit_in_bytes");
}

TEST_CASE("without cgroup files or meminfo there is no limit and no available memory, not a crash") {
    const fs::path empty = fs::temp_directory_path() / fmt::format("sluice_no_cgroup_{}", ::getpid());
    fs::create_directories(empty);
    CHECK_FALSE(cgroup_memory_limit(empty));
    CHECK(available_ram_bytes(empty) == 0);
    fs::remove_all(empty);
}

TEST_CASE("inside a real memory cgroup of 512 MiB the default budget is under 512 MiB and names the group") {
    // A cgroup of our own: v1's memory hierarchy (this project's machines) or v2 with the memory
    // controller; skipped where the process may not make one (not root, read-only, no controller).
    const fs::path v1 = "/sys/fs/cgroup/memory", v2 = "/sys/fs/cgroup";
    fs::path group, limit_file;
    const std::string name = fmt::format("sluice_budget_test_{}", ::getpid());
    std::ifstream controllers(v2 / "cgroup.controllers");
    std::string list((std::istreambuf_iterator<char>(controllers)), {});
    if (list.find("memory") != std::string::npos) {
        group = v2 / name;
        limit_file = group / "memory.max";
    } else if (fs::exists(v1 / "memory.limit_in_bytes")) {
        group = v1 / name;
        limit_file = group / "memory.limit_in_bytes";
    }
    std::error_code ec;
    if (group.empty() || !fs::create_directory(group, ec)) {
        MESSAGE("no memory cgroup can be made here (" << (group.empty() ? "no memory controller" : ec.message())
                                                      << "); skipped");
        return;
    }
    std::ofstream(limit_file) << (512u << 20);
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(pipe_fds[0]);
        std::ofstream(group / "cgroup.procs") << ::getpid() << std::flush;
        const auto budget = default_memory_budget(0.85);
        const std::string out = fmt::format("{}\n{}", budget.bytes, budget.source);
        const bool ok = ::write(pipe_fds[1], out.data(), out.size()) == ssize_t(out.size());
        _exit(ok ? 0 : 1);
    }
    ::close(pipe_fds[1]);
    std::string reply;
    char buffer[512];
    for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) reply.append(buffer, size_t(n));
    ::close(pipe_fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    fs::remove(group, ec);  // the child has exited: the group is empty
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    const size_t newline = reply.find('\n');
    REQUIRE(newline != std::string::npos);
    const uint64_t bytes = std::stoull(reply.substr(0, newline));
    const std::string source = reply.substr(newline + 1);
    CAPTURE(source);
    CHECK(bytes <= uint64_t(0.85 * (512u << 20)));
    CHECK(bytes > 0);
    CHECK(source.find(limit_file.string()) != std::string::npos);
}
