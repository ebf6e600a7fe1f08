// `sluice bench-io`: read rate and per-request latency of sluice's readers (io_uring O_DIRECT,
// pread pool) beside buffered read() and cold mmap (sequential and MADV_RANDOM), and, when fio
// is on PATH, fio on the same files with the same block size and depth in the same run,
// alternating with ours over several rounds. Reports medians, spread (min-max) and ratios.
// Caches are dropped before every run when root; otherwise a warning says the page cache may
// serve the reads.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "engine/cli/bench_io_device.hpp"
#include "engine/cli/command.hpp"
#include "engine/runtime.hpp"
#include "io/read_rate.hpp"
#include "io/segment_reader.hpp"
#include "io/staging_ring.hpp"

namespace sluice::cli {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct RunResult {
    double gb_per_s = 0;
    double p50_us = 0, p90_us = 0, p99_us = 0;
};

struct BenchArgs {
    std::string path;
    std::string bs = "1M";
    unsigned qd = 8;
    int files = 0;
    bool buffered = false;
    std::string backend = "auto";
    double seconds = 5;
    int rounds = 3;
    bool json = false;
    bool no_fio = false;
    bool keep_cache = false;
    std::string to_device;  // --to-device [cuda:N]
};

uint64_t parse_size(const std::string& text) {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || v <= 0) fail(ErrorKind::invalid_input, "size '{}' is not a positive number", text);
    uint64_t mult = 1;
    switch (*end) {
        case 'k': case 'K': mult = uint64_t(1) << 10; break;
        case 'm': case 'M': mult = uint64_t(1) << 20; break;
        case 'g': case 'G': mult = uint64_t(1) << 30; break;
        case '\0': break;
        default: fail(ErrorKind::invalid_input, "size '{}': unknown unit", text);
    }
    return uint64_t(v * double(mult));
}

std::vector<std::string> input_files(const std::string& path, int max_files) {
    std::vector<std::string> out;
    if (fs::is_directory(path)) {
        for (const auto& e : fs::directory_iterator(path))
            if (e.is_regular_file() && e.path().extension() != ".json" && e.file_size() >= (1 << 20))
                out.push_back(e.path().string());
        std::sort(out.begin(), out.end());
    } else {
        out.push_back(path);
    }
    if (out.empty()) fail(ErrorKind::invalid_input, "{}: no model files (>= 1 MiB) to read", path);
    if (max_files > 0 && size_t(max_files) < out.size()) out.resize(size_t(max_files));
    return out;
}

bool drop_caches() {
    ::sync();
    std::ofstream f("/proc/sys/vm/drop_caches");
    if (!f) return false;
    f << "3\n";
    f.flush();
    return bool(f);
}

double percentile(std::vector<double>& v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

void fill_latency(RunResult& r, std::vector<double>& lat_us) {
    r.p50_us = percentile(lat_us, 0.50);
    r.p90_us = percentile(lat_us, 0.90);
    r.p99_us = percentile(lat_us, 0.99);
}

// The list of (file, offset) blocks a run walks: the files in order, bs at a time.
struct Block {
    uint32_t file;
    uint64_t offset;
    uint64_t length;
};
std::vector<Block> sequential_blocks(const std::vector<uint64_t>& sizes, uint64_t bs) {
    std::vector<Block> out;
    for (uint32_t f = 0; f < sizes.size(); ++f)
        for (uint64_t o = 0; o < sizes[f]; o += bs) out.push_back({f, o, std::min(bs, sizes[f] - o)});
    return out;
}

RunResult run_sluice(const std::vector<std::string>& paths, uint64_t bs, const BenchArgs& a, io::Backend backend,
                     io::StagingRing& ring, std::string* backend_used) {
    io::ReaderOptions options;
    options.backend = backend;
    options.direct = !a.buffered;
    options.request_bytes = size_t(bs);
    options.queue_depth = a.qd;
    options.pread_threads = int(a.qd);
    io::ReadRun run = io::time_sequential_reads(paths, options, ring, a.seconds);
    *backend_used = run.backend;
    RunResult r;
    r.gb_per_s = run.gb_per_s;
    fill_latency(r, run.latency_us);
    return r;
}

RunResult run_buffered_read(const std::vector<std::string>& paths, const std::vector<Block>& blocks, uint64_t bs,
                            const BenchArgs& a, std::byte* buffer) {
    std::vector<int> fds;
    for (const auto& p : paths) fds.push_back(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    std::vector<double> lat_us;
    lat_us.reserve(blocks.size());
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration<double>(a.seconds);
    uint64_t bytes = 0;
    for (const auto& b : blocks) {
        const auto s = Clock::now();
        if (s >= deadline) break;
        const ssize_t n = ::pread(fds[b.file], buffer, b.length, off_t(b.offset));
        if (n < 0) fail(ErrorKind::io, "read {} offset {}: {}", paths[b.file], b.offset, std::strerror(errno));
        bytes += uint64_t(n);
        lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    for (int fd : fds) ::close(fd);
    (void)bs;
    RunResult r;
    r.gb_per_s = double(bytes) / secs / 1e9;
    fill_latency(r, lat_us);
    return r;
}

// Cold mmap: copy each bs block out of the mapping (page faults do the reading).
RunResult run_mmap(const std::vector<std::string>& paths, std::vector<Block> blocks, const BenchArgs& a,
                   std::byte* buffer, bool random) {
    std::vector<std::byte*> maps;
    std::vector<size_t> lens;
    for (const auto& p : paths) {
        const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        struct stat st {};
        ::fstat(fd, &st);
        void* m = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
        ::close(fd);
        if (m == MAP_FAILED) fail(ErrorKind::io, "mmap {}: {}", p, std::strerror(errno));
        ::madvise(m, size_t(st.st_size), random ? MADV_RANDOM : MADV_SEQUENTIAL);
        maps.push_back(static_cast<std::byte*>(m));
        lens.push_back(size_t(st.st_size));
    }
    if (random) std::shuffle(blocks.begin(), blocks.end(), std::mt19937(42));
    std::vector<double> lat_us;
    lat_us.reserve(blocks.size());
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration<double>(a.seconds);
    uint64_t bytes = 0;
    for (const auto& b : blocks) {
        const auto s = Clock::now();
        if (s >= deadline) break;
        std::memcpy(buffer, maps[b.file] + b.offset, b.length);
        bytes += b.length;
        lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    for (size_t i = 0; i < maps.size(); ++i) ::munmap(maps[i], lens[i]);
    RunResult r;
    r.gb_per_s = double(bytes) / secs / 1e9;
    fill_latency(r, lat_us);
    return r;
}

bool fio_available() { return std::system("command -v fio >/dev/null 2>&1") == 0; }

// fio on the first file: io_uring at the same depth, or psync with as many jobs as our threads.
RunResult run_fio(const std::string& path, uint64_t file_bytes, uint64_t bs, const BenchArgs& a, bool uring) {
    const unsigned jobs = uring ? 1 : a.qd;
    const uint64_t per_job = file_bytes / jobs / bs * bs;
    std::string cmd = fmt::format(
        "fio --name=sluice --filename='{}' --rw=read --bs={} --direct={} --ioengine={} --iodepth={} --numjobs={} "
        "--size={} --offset_increment={} --runtime={} --group_reporting --output-format=json 2>/dev/null",
        path, bs, a.buffered ? 0 : 1, uring ? "io_uring" : "psync", uring ? a.qd : 1u, jobs, per_job, per_job,
        std::max(1, int(a.seconds + 0.5)));
    FILE* pipe = ::popen(cmd.c_str(), "r");
    if (!pipe) fail(ErrorKind::io, "cannot run fio: {}", std::strerror(errno));
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
    ::pclose(pipe);
    const auto start = out.find('{');
    if (start == std::string::npos) fail(ErrorKind::io, "fio printed no JSON for: {}", cmd);
    const auto j = nlohmann::json::parse(out.substr(start));
    const auto& read = j.at("jobs").at(0).at("read");
    RunResult r;
    r.gb_per_s = read.at("bw_bytes").get<double>() / 1e9;
    const auto& pct = read.at("clat_ns").at("percentile");
    r.p50_us = pct.at("50.000000").get<double>() / 1e3;
    r.p90_us = pct.at("90.000000").get<double>() / 1e3;
    r.p99_us = pct.at("99.000000").get<double>() / 1e3;
    return r;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

int run_bench_io(const BenchArgs& a) {
    const uint64_t bs = parse_size(a.bs);
    if (bs % 4096 != 0) fail(ErrorKind::invalid_input, "--bs {} is not a multiple of 4 KiB", bs);
    if (a.qd == 0 || a.rounds <= 0 || a.seconds <= 0) fail(ErrorKind::invalid_input, "--qd, --rounds, --seconds must be positive");
    const auto paths = input_files(a.path, a.files);
    std::vector<uint64_t> sizes;
    uint64_t total = 0;
    for (const auto& p : paths) {
        std::error_code ec;
        sizes.push_back(fs::file_size(p, ec));
        if (ec) fail(ErrorKind::io, "{}: {}", p, ec.message());
        total += sizes.back();
    }
    const auto blocks = sequential_blocks(sizes, bs);
    const bool root = ::geteuid() == 0;
    bool can_drop = root && !a.keep_cache && drop_caches();
    if (!can_drop) {
        const uint64_t avail = uint64_t(::sysconf(_SC_AVPHYS_PAGES)) * uint64_t(::sysconf(_SC_PAGESIZE));
        std::fprintf(stderr, "sluice: warning: page cache not dropped (%s)%s\n",
                     a.keep_cache ? "--keep-cache" : "not root",
                     total < avail ? "; the files fit in free RAM, so the page cache may serve reads" : "");
    }
    if (!a.to_device.empty()) {
        DeviceIoBenchOptions o;
        o.paths = paths;
        o.sizes = sizes;
        o.request_bytes = bs;
        o.queue_depth = a.qd;
        o.seconds = a.seconds;
        o.rounds = a.rounds;
        o.json = a.json;
        const DeviceChoice d = resolve_device(a.to_device);
        if (!d.cuda) fail(ErrorKind::invalid_input, "--to-device {}: name a CUDA device (cuda or cuda:N)", a.to_device);
        o.device = d.index;
        if (can_drop) o.drop_caches = drop_caches;
        const auto j = run_bench_io_to_device(o);
        if (a.json) fmt::print("{}\n", j.dump());
        return 0;
    }
    const bool fio = !a.no_fio && fio_available();
    if (fio && paths.size() > 1)
        std::fprintf(stderr, "sluice: note: fio reads the first file only; ours read all %zu\n", paths.size());

    io::StagingRing ring(a.qd, size_t(bs), 4);
    std::byte* scratch = ring.regions()[0].data();
    const io::Backend backend = io::parse_backend(a.backend);
    std::map<std::string, std::vector<RunResult>> results;
    std::vector<std::string> order;
    std::string uring_used, pread_used;
    auto record = [&](const std::string& name, auto&& fn) {
        if (can_drop) can_drop = drop_caches();
        if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
        results[name].push_back(fn());
    };
    for (int round = 0; round < a.rounds; ++round) {
        if (backend != io::Backend::pread)
            record("sluice io_uring", [&] { return run_sluice(paths, bs, a, backend, ring, &uring_used); });
        if (fio) record("fio io_uring", [&] { return run_fio(paths[0], sizes[0], bs, a, true); });
        if (backend != io::Backend::uring)
            record("sluice pread pool", [&] { return run_sluice(paths, bs, a, io::Backend::pread, ring, &pread_used); });
        if (fio) record("fio psync", [&] { return run_fio(paths[0], sizes[0], bs, a, false); });
        record("buffered read", [&] { return run_buffered_read(paths, blocks, bs, a, scratch); });
        record("mmap sequential", [&] { return run_mmap(paths, blocks, a, scratch, false); });
        record("mmap random", [&] { return run_mmap(paths, blocks, a, scratch, true); });
    }
    auto med = [&](const std::string& n, double RunResult::*field) {
        std::vector<double> v;
        for (const auto& r : results[n]) v.push_back(r.*field);
        return median(v);
    };
    auto spread = [&](const std::string& n) {
        double lo = 1e300, hi = 0;
        for (const auto& r : results[n]) lo = std::min(lo, r.gb_per_s), hi = std::max(hi, r.gb_per_s);
        return std::pair{lo, hi};
    };
    const std::map<std::string, std::string> peer = {{"sluice io_uring", "fio io_uring"}, {"sluice pread pool", "fio psync"}};
    nlohmann::json j = {{"files", paths}, {"total_bytes", total}, {"bs", bs}, {"qd", a.qd}, {"direct", !a.buffered},
                        {"rounds", a.rounds}, {"seconds", a.seconds}, {"caches_dropped", can_drop}, {"fio", fio},
                        {"uring_backend", uring_used}, {"methods", nlohmann::json::array()}};
    if (!a.json) {
        fmt::print("bench-io: {} file(s), {:.2f} GiB, bs {} KiB, qd {}, {}, {} rounds of <= {} s, caches {}\n",
                   paths.size(), double(total) / (1 << 30), bs >> 10, a.qd, a.buffered ? "buffered" : "O_DIRECT",
                   a.rounds, a.seconds, can_drop ? "dropped before each run" : "NOT dropped");
        fmt::print("{:<18} {:>8} {:>15} {:>9} {:>9} {:>9} {:>8}\n", "method", "GB/s", "spread", "p50 us", "p90 us",
                   "p99 us", "vs fio");
    }
    for (const auto& n : order) {
        const auto [lo, hi] = spread(n);
        const double gb = med(n, &RunResult::gb_per_s);
        double ratio = 0;
        if (auto p = peer.find(n); p != peer.end() && results.count(p->second))
            ratio = gb / std::max(1e-12, med(p->second, &RunResult::gb_per_s));
        j["methods"].push_back({{"method", n}, {"gb_per_s_median", gb}, {"gb_per_s_min", lo}, {"gb_per_s_max", hi},
                                {"p50_us", med(n, &RunResult::p50_us)}, {"p90_us", med(n, &RunResult::p90_us)},
                                {"p99_us", med(n, &RunResult::p99_us)}, {"ratio_vs_fio", ratio}});
        if (!a.json)
            fmt::print("{:<18} {:>8.3f} {:>7.3f}-{:<7.3f} {:>9.0f} {:>9.0f} {:>9.0f} {:>8}\n", n, gb, lo, hi,
                       med(n, &RunResult::p50_us), med(n, &RunResult::p90_us), med(n, &RunResult::p99_us),
                       ratio > 0 ? fmt::format("{:.2f}x", ratio) : "");
    }
    if (a.json) fmt::print("{}\n", j.dump());
    return 0;
}

}  // namespace

void register_bench_io(CLI::App& app) {
    auto* sub = app.add_subcommand("bench-io", "Read rate and latency of sluice's readers beside fio, read() and mmap");
    auto args = std::make_shared<BenchArgs>();
    sub->add_option("path", args->path, "A file, a model directory or a .gguf")->required();
    sub->add_option("--bs", args->bs, "Request size (e.g. 1M, 4M)");
    sub->add_option("--qd", args->qd, "Queue depth (io_uring) / threads (pread pool, fio psync jobs)");
    sub->add_option("--files", args->files, "Read at most this many files of a directory");
    sub->add_flag("--buffered", args->buffered, "Read through the page cache instead of O_DIRECT");
    sub->add_flag("--direct", [args](int64_t) { args->buffered = false; }, "O_DIRECT (the default)");
    sub->add_option("--backend", args->backend, "auto | uring | pread");
    sub->add_option("--seconds", args->seconds, "Longest time per run");
    sub->add_option("--rounds", args->rounds, "Rounds (each runs every method once, alternating with fio)");
    sub->add_flag("--no-fio", args->no_fio, "Do not run fio even if it is on PATH");
    sub->add_flag("--keep-cache", args->keep_cache, "Do not drop the page cache between runs (even as root)");
    sub->add_flag("--json", args->json, "Print one JSON object");
    sub->add_option("--to-device", args->to_device,
                    "Disk-to-GPU by stage instead: disk -> pinned host, pinned host -> device, both pipelined (and "
                    "cuFile where libcufile loads), on this device (cuda or cuda:N)")
        ->expected(0, 1)
        ->default_str("cuda");
    add_command(app, sub, [args] { return run_bench_io(*args); });
}

}  // namespace sluice::cli
