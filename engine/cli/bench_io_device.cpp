#include "engine/cli/bench_io_device.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "core/error.hpp"
#include "engine/cuda/cuda_backend.hpp"
#include "io/segment_reader.hpp"
#include "io/staging_ring.hpp"

namespace sluice::cli {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The request-sized blocks of the files in order, cycled until the run's time is up.
struct Block {
    uint32_t file;
    uint64_t offset, length;
};

class Blocks {
public:
    explicit Blocks(const DeviceIoBenchOptions& o) {
        for (uint32_t f = 0; f < o.sizes.size(); ++f)
            for (uint64_t off = 0; off + 4096 <= o.sizes[f]; off += o.request_bytes)
                blocks_.push_back({f, off, std::min(o.request_bytes, o.sizes[f] - off) / 4096 * 4096});
        if (blocks_.empty()) fail(ErrorKind::invalid_input, "bench-io --to-device: the files are smaller than one block");
    }
    const Block& next() { return blocks_[next_++ % blocks_.size()]; }

private:
    std::vector<Block> blocks_;
    size_t next_ = 0;
};

struct Stage {
    double gb_per_s = 0;
};

// The ring of pinned staging slots, the device slots, and the reader: one setup for every stage.
struct Rig {
    const DeviceIoBenchOptions& o;
    std::unique_ptr<Backend> device;
    io::StagingRing ring;
    std::vector<std::byte*> device_slots;
    std::vector<int> copy_done;  // per staging slot

    explicit Rig(const DeviceIoBenchOptions& options)
        : o(options), device(make_cuda_backend(CudaBackendOptions{options.device})),
          ring(2 * options.queue_depth, size_t(options.request_bytes), 1) {
        if (!ring.pinned_for_device())
            fail(ErrorKind::unsupported, "bench-io --to-device: the staging slots could not be page-locked for the device");
        for (size_t i = 0; i < 4; ++i)
            device_slots.push_back(static_cast<std::byte*>(device->alloc_weight_bytes(size_t(o.request_bytes))));
        for (size_t i = 0; i < ring.n_slots(); ++i) copy_done.push_back(device->create_event());
    }
    std::byte* slot(size_t i) { return ring.regions()[0].data() + i * ring.slot_bytes(); }

    // Reads into the staging slots, qd deep; with `copy`, each landed slot is copied to the device
    // and read into again only after that copy's event completed.
    Stage disk(bool copy) {
        io::ReaderOptions ro;
        ro.request_bytes = size_t(o.request_bytes);
        ro.queue_depth = o.queue_depth;
        io::SegmentReader reader(FileSet{o.paths}, ro);
        reader.register_buffers(ring.regions());
        Blocks blocks(o);
        const size_t n = ring.n_slots();
        std::vector<uint64_t> ticket(n, 0);
        std::vector<uint64_t> length(n, 0);
        std::vector<bool> copying(n, false);
        std::vector<const std::byte*> data(n);
        uint64_t bytes = 0;
        size_t head = 0, copies = 0;
        const auto t0 = Clock::now();
        const auto deadline = t0 + std::chrono::duration<double>(o.seconds);
        auto submit = [&](size_t s) {
            if (copying[s]) {
                device->host_waits_for(copy_done[s]);  // the slot's bytes have left for the device
                copying[s] = false;
            }
            const Block& b = blocks.next();
            const Extent e{b.file, b.offset, b.length};
            length[s] = b.length;
            ticket[s] = reader.submit({&e, 1}, slot(s), ring.slot_bytes(), &data[s]);
        };
        // Slots are used in ring order: at most qd reads in flight, the rest copying.
        for (size_t s = 0; s < std::min<size_t>(o.queue_depth, n); ++s) submit(s);
        size_t next_submit = std::min<size_t>(o.queue_depth, n);
        while (Clock::now() < deadline) {
            const size_t s = head % n;
            reader.wait(ticket[s]);
            ticket[s] = 0;
            bytes += length[s];
            if (copy) {
                device->copy_weights_async(device_slots[copies++ % device_slots.size()], data[s], size_t(length[s]), 0, 0);
                device->record_on_copy(copy_done[s]);
                copying[s] = true;
            }
            ++head;
            submit(next_submit++ % n);
        }
        for (size_t s = 0; s < n; ++s)
            if (ticket[s]) reader.wait(ticket[s]);
        if (copy) {
            const int end = copy_done[0];
            device->record_on_copy(end);
            device->host_waits_for(end);
        }
        return {double(bytes) / since(t0) / 1e9};
    }

    // Copies from the pinned slots to the device, as fast as the copy stream takes them.
    Stage host_to_device() {
        const auto t0 = Clock::now();
        const auto deadline = t0 + std::chrono::duration<double>(o.seconds);
        uint64_t bytes = 0;
        size_t i = 0;
        while (Clock::now() < deadline) {
            // Keep a few copies queued, waiting on the oldest so the queue does not grow.
            const size_t s = i % ring.n_slots();
            if (i >= ring.n_slots()) device->host_waits_for(copy_done[s]);
            device->copy_weights_async(device_slots[i % device_slots.size()], slot(s), size_t(o.request_bytes), 0, 0);
            device->record_on_copy(copy_done[s]);
            bytes += o.request_bytes;
            ++i;
        }
        for (size_t s = 0; s < std::min(i, ring.n_slots()); ++s) device->host_waits_for(copy_done[s]);
        return {double(bytes) / since(t0) / 1e9};
    }
};

// GPUDirect Storage through libcufile, loaded if present (its compatibility mode needs no kernel
// driver). The C API as documented: error struct {int err; int cu_err}, a descriptor naming an fd.
struct CuFile {
    struct Error {
        int err;
        int cu_err;
    };
    struct Descr {
        int type;  // 1: CU_FILE_HANDLE_TYPE_OPAQUE_FD
        union {
            int fd;
            void* handle;
        } handle;
        const void* fs_ops;
    };
    Error (*driver_open)() = nullptr;
    Error (*handle_register)(void**, Descr*) = nullptr;
    void (*handle_deregister)(void*) = nullptr;
    ssize_t (*read)(void*, void*, size_t, off_t, off_t) = nullptr;
    std::string unavailable;

    CuFile() {
        void* lib = dlopen("libcufile.so.0", RTLD_NOW | RTLD_LOCAL);
        if (!lib) lib = dlopen("libcufile.so", RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            unavailable = "libcufile not found";
            return;
        }
        driver_open = reinterpret_cast<decltype(driver_open)>(dlsym(lib, "cuFileDriverOpen"));
        handle_register = reinterpret_cast<decltype(handle_register)>(dlsym(lib, "cuFileHandleRegister"));
        handle_deregister = reinterpret_cast<decltype(handle_deregister)>(dlsym(lib, "cuFileHandleDeregister"));
        read = reinterpret_cast<decltype(read)>(dlsym(lib, "cuFileRead"));
        if (!driver_open || !handle_register || !handle_deregister || !read) unavailable = "libcufile lacks its entry points";
        else if (driver_open().err != 0) unavailable = "cuFileDriverOpen failed";
    }

    Stage run(const DeviceIoBenchOptions& o, Rig& rig) {
        std::vector<void*> handles;
        std::vector<int> fds;
        for (const auto& p : o.paths) {
            const int fd = ::open(p.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
            if (fd < 0) fail(ErrorKind::io, "{}: {}", p, std::strerror(errno));
            Descr d{};
            d.type = 1;
            d.handle.fd = fd;
            void* h = nullptr;
            const Error e = handle_register(&h, &d);
            if (e.err != 0) {
                ::close(fd);
                for (size_t i = 0; i < handles.size(); ++i) handle_deregister(handles[i]), ::close(fds[i]);
                fail(ErrorKind::io, "cuFileHandleRegister {}: error {}", p, e.err);
            }
            handles.push_back(h);
            fds.push_back(fd);
        }
        Blocks blocks(o);
        uint64_t bytes = 0;
        size_t i = 0;
        const auto t0 = Clock::now();
        const auto deadline = t0 + std::chrono::duration<double>(o.seconds);
        while (Clock::now() < deadline) {
            const Block& b = blocks.next();
            const ssize_t n = read(handles[b.file], rig.device_slots[i++ % rig.device_slots.size()], size_t(b.length),
                                   off_t(b.offset), 0);
            if (n < 0) fail(ErrorKind::io, "cuFileRead {} at {}: {}", o.paths[b.file], b.offset, n);
            bytes += uint64_t(n);
        }
        const double s = since(t0);
        for (size_t k = 0; k < handles.size(); ++k) handle_deregister(handles[k]), ::close(fds[k]);
        return {double(bytes) / s / 1e9};
    }
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

nlohmann::json run_bench_io_to_device(const DeviceIoBenchOptions& o) {
    if (o.request_bytes % 4096 != 0) fail(ErrorKind::invalid_input, "--bs {} is not a multiple of 4 KiB", o.request_bytes);
    Rig rig(o);
    CuFile cufile;
    std::map<std::string, std::vector<double>> rates;
    const std::vector<std::string> order = {"disk -> pinned host", "pinned host -> device", "pipelined disk -> device",
                                            "cuFile disk -> device"};
    bool dropped = true;
    for (int r = 0; r < o.rounds; ++r) {
        if (o.drop_caches) dropped = o.drop_caches() && dropped;
        rates[order[0]].push_back(rig.disk(false).gb_per_s);
        rates[order[1]].push_back(rig.host_to_device().gb_per_s);
        if (o.drop_caches) dropped = o.drop_caches() && dropped;
        rates[order[2]].push_back(rig.disk(true).gb_per_s);
        if (cufile.unavailable.empty()) {
            if (o.drop_caches) dropped = o.drop_caches() && dropped;
            rates[order[3]].push_back(cufile.run(o, rig).gb_per_s);
        }
    }
    const double slowest = std::min(median(rates[order[0]]), median(rates[order[1]]));
    nlohmann::json j = {{"device", rig.device->name()}, {"files", o.paths}, {"bs", o.request_bytes}, {"qd", o.queue_depth},
                        {"staging_slots", rig.ring.n_slots()}, {"rounds", o.rounds}, {"seconds", o.seconds},
                        {"caches_dropped", dropped && bool(o.drop_caches)}, {"slowest_stage_gb_per_s", slowest},
                        {"cufile", cufile.unavailable.empty() ? "measured" : cufile.unavailable},
                        {"stages", nlohmann::json::array()}};
    if (!o.json)
        fmt::print("bench-io --to-device: {}, bs {} KiB, qd {}, {} pinned staging slots, {} rounds of <= {} s, caches {}\n",
                   rig.device->name(), o.request_bytes >> 10, o.queue_depth, rig.ring.n_slots(), o.rounds, o.seconds,
                   dropped && o.drop_caches ? "dropped before each disk run" : "NOT dropped");
    if (!o.json) fmt::print("{:<26} {:>8} {:>15} {:>16}\n", "stage", "GB/s", "spread", "of slowest stage");
    for (const auto& name : order) {
        if (!rates.count(name)) continue;
        const auto& v = rates[name];
        const double m = median(v);
        const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
        j["stages"].push_back({{"stage", name}, {"gb_per_s_median", m}, {"gb_per_s_min", *lo}, {"gb_per_s_max", *hi},
                               {"fraction_of_slowest_stage", slowest > 0 ? m / slowest : 0.0}});
        if (!o.json)
            fmt::print("{:<26} {:>8.3f} {:>7.3f}-{:<7.3f} {:>16}\n", name, m, *lo, *hi,
                       name == order[2] || name == order[3] ? fmt::format("{:.2f}", slowest > 0 ? m / slowest : 0.0) : "");
    }
    if (!o.json && !cufile.unavailable.empty()) fmt::print("cuFile (GPUDirect Storage): not measured ({})\n", cufile.unavailable);
    return j;
}

}  // namespace sluice::cli
