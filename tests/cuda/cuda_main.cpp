// main() of the CUDA test programs: without a usable device they print why and exit 77, which
// meson reports as SKIP, so a machine without a GPU never shows these tests as passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/cuda/device.hpp"

int main(int argc, char** argv) {
    const auto q = sluice::cuda::query_devices();
    if (q.devices.empty()) {
        std::printf("skipped: no CUDA device (%s)\n", q.reason.c_str());
        return 77;
    }
    const auto& d = q.devices.front();
    std::printf("device 0: %s, sm_%d%d, %zu MiB, %d SMs\n", d.name.c_str(), d.sm_major, d.sm_minor, d.total_bytes >> 20,
                d.n_multiprocessors);
    if (d.name.starts_with("cudaemu")) {  // the emulated device: say how to reproduce this run
        const char* order = std::getenv("CUDAEMU_ORDER");
        const char* seed = std::getenv("CUDAEMU_SEED");
        std::printf("emulated: CUDAEMU_ORDER=%s CUDAEMU_SEED=%s\n", order ? order : "random", seed ? seed : "1");
    }
    doctest::Context context(argc, argv);
    return context.run();
}
