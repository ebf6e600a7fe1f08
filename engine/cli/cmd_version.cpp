// `sluice version`: the build and what it can use on this machine (CPU features, CUDA devices).
#include <fmt/format.h>

#include "engine/cli/command.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/quant_dot.hpp"
#include "kernels/cuda/device.hpp"

namespace sluice::cli {

void register_version(CLI::App& app) {
    auto* sub = app.add_subcommand("version", "Print the build, CPU features and CUDA devices");
    add_command(app, sub, [] {
        fmt::print("sluice {}\n", SLUICE_VERSION);
        const auto f = cpu::detect_cpu_features();
        fmt::print("cpu: avx2={} fma={} f16c={} avx512f={} avx512bw={} avx512vnni={} avx512bf16={}\n", f.avx2, f.fma,
                   f.f16c, f.avx512f, f.avx512bw, f.avx512vnni, f.avx512bf16);
        // the kernels quantised weights take here (amx: Q4_K and Q6_K on tile multiplies, the rest on avx512_vnni)
        fmt::print("quantised dot: {}\n", cpu::quant_dot_path_name(cpu::best_quant_dot_path()));
        const auto q = cuda::query_devices();
        if (q.devices.empty()) fmt::print("cuda: none ({})\n", q.reason);
        for (const auto& d : q.devices)
            fmt::print("cuda: device {} {}, compute capability {}.{}, {:.1f} GiB ({:.1f} GiB free), {} SMs\n", d.index,
                       d.name, d.sm_major, d.sm_minor, double(d.total_bytes) / (1 << 30),
                       double(d.free_bytes) / (1 << 30), d.n_multiprocessors);
        return 0;
    });
}

}  // namespace sluice::cli
