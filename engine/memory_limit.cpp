#include "engine/memory_limit.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>

namespace sluice {

namespace fs = std::filesystem;

namespace {

// Above this a v1 limit means "none" (the kernel writes 2^63 less a page for unlimited).
constexpr uint64_t kUnlimited = uint64_t(1) << 62;

fs::path under(const fs::path& root, const std::string& absolute) {
    return root / fs::path(absolute).relative_path();
}

// A number alone in a file ("max" and unreadable files: nullopt).
std::optional<uint64_t> read_number(const fs::path& file) {
    std::ifstream in(file);
    std::string text;
    if (!(in >> text) || text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    try {
        return std::stoull(text);
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

// A "key value" line of memory.stat.
std::optional<uint64_t> read_stat(const fs::path& file, const std::string& key) {
    std::ifstream in(file);
    std::string k;
    uint64_t v = 0;
    while (in >> k >> v)
        if (k == key) return v;
    return std::nullopt;
}

// mountinfo escapes space, tab, newline and backslash in paths as \ooo.
std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
            out += char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}

struct Mount {
    std::string root;         // the directory of the hierarchy mounted
    std::string mount_point;
};

// The mount of the v1 hierarchy with the memory controller (v2: false), or of the v2 hierarchy.
std::optional<Mount> find_mount(const fs::path& root, bool v2) {
    std::ifstream in(under(root, "/proc/self/mountinfo"));
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::vector<std::string> f;
        for (std::string w; fields >> w;) f.push_back(w);
        const auto dash = std::find(f.begin(), f.end(), "-");
        if (f.size() < 5 || dash == f.end() || f.end() - dash < 3) continue;
        const std::string& fstype = dash[1];
        const std::string& super_options = f.end() - dash >= 4 ? dash[3] : dash[2];
        bool match = false;
        if (v2) {
            match = fstype == "cgroup2";
        } else if (fstype == "cgroup") {
            std::istringstream options(super_options);
            for (std::string o; std::getline(options, o, ',');) match = match || o == "memory";
        }
        if (match) return Mount{unescape(f[3]), unescape(f[4])};
    }
    return std::nullopt;
}

// The process's path in the v1 memory hierarchy or the v2 one, from /proc/self/cgroup.
std::optional<std::string> own_path(const fs::path& root, bool v2) {
    std::ifstream in(under(root, "/proc/self/cgroup"));
    std::string line;
    while (std::getline(in, line)) {
        const size_t a = line.find(':'), b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string id = line.substr(0, a), controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
        if (v2 && id == "0" && controllers.empty()) return path;
        if (!v2) {
            std::istringstream list(controllers);
            for (std::string c; std::getline(list, c, ',');)
                if (c == "memory") return path;
        }
    }
    return std::nullopt;
}

fs::path without_trailing_separator(fs::path p) {
    while (!p.has_filename() && p.has_parent_path() && p.parent_path() != p) p = p.parent_path();
    return p;
}

// The group's directory: the mount point, then the group's path below the mounted root. (A
// container without its own cgroup namespace may see a path outside the root mounted for it:
// then the mount is its own group.)
fs::path group_directory(const fs::path& root, const Mount& m, const std::string& path) {
    const fs::path full = path;
    fs::path relative = full;
    if (m.root != "/") {
        const fs::path mounted = m.root;
        auto p = full.begin(), r = mounted.begin();
        for (; r != mounted.end() && p != full.end() && *p == *r; ++p, ++r) {
        }
        relative = "/";
        if (r == mounted.end())  // the group lies under the mounted root
            for (; p != full.end(); ++p) relative /= *p;
    }
    return without_trailing_separator((under(root, m.mount_point) / relative.relative_path()).lexically_normal());
}

void tighten(std::optional<CgroupMemoryLimit>& best, const fs::path& root, bool v2) {
    const auto mount = find_mount(root, v2);
    const auto path = own_path(root, v2);
    if (!mount || !path) return;
    const fs::path top = without_trailing_separator(under(root, mount->mount_point).lexically_normal());
    for (fs::path dir = group_directory(root, *mount, *path);; dir = dir.parent_path()) {
        const auto limit = read_number(dir / (v2 ? "memory.max" : "memory.limit_in_bytes"));
        if (limit && *limit < kUnlimited) {
            const uint64_t usage = read_number(dir / (v2 ? "memory.current" : "memory.usage_in_bytes")).value_or(0);
            const auto inactive = v2 ? read_stat(dir / "memory.stat", "inactive_file")
                                     : read_stat(dir / "memory.stat", "total_inactive_file");
            const uint64_t unreclaimable = usage - std::min(usage, inactive.value_or(0));
            const uint64_t available = *limit - std::min(*limit, unreclaimable);
            if (!best || available < best->available_bytes) {
                // The path as the process sees it (without the fixture root).
                const fs::path shown = fs::path("/") / (dir / (v2 ? "memory.max" : "memory.limit_in_bytes")).lexically_relative(root);
                best = CgroupMemoryLimit{*limit, available, shown.lexically_normal().string()};
            }
        }
        // Up to the hierarchy's root, not above it.
        if (dir == top || dir.parent_path() == dir || dir.native().size() <= top.native().size()) break;
    }
}

double gib(uint64_t b) { return double(b) / (1 << 30); }

}  // namespace

std::optional<CgroupMemoryLimit> cgroup_memory_limit(const fs::path& root) {
    std::optional<CgroupMemoryLimit> best;
    tighten(best, root, false);
    tighten(best, root, true);
    return best;
}

uint64_t available_ram_bytes(const fs::path& root) {
    std::ifstream in(under(root, "/proc/meminfo"));
    std::string key, unit;
    uint64_t kib = 0;
    while (in >> key >> kib >> unit)
        if (key == "MemAvailable:") return kib * 1024;
    return 0;
}

MemoryBudget default_memory_budget(double fraction, const fs::path& root) {
    const uint64_t host = available_ram_bytes(root);
    const auto group = cgroup_memory_limit(root);
    const int percent = int(fraction * 100 + 0.5);
    if (group && (host == 0 || group->available_bytes < host))
        return {uint64_t(double(group->available_bytes) * fraction),
                fmt::format("{}% of the memory free under the cgroup limit {} ({:.2f} GiB, {:.2f} GiB free)", percent,
                            group->file, gib(group->limit_bytes), gib(group->available_bytes))};
    return {uint64_t(double(host) * fraction), fmt::format("{}% of MemAvailable ({:.2f} GiB){}", percent, gib(host),
                                                           group ? fmt::format("; cgroup limit {} is higher", group->file)
                                                                 : std::string())};
}

}  // namespace sluice
