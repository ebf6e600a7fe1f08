#include "kernels/cpu/cpu_features.hpp"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>

namespace sluice::cpu {

const CpuFeatures& detect_cpu_features() {
    static const CpuFeatures features = [] {
        CpuFeatures f;
        __builtin_cpu_init();
        f.avx2 = __builtin_cpu_supports("avx2");
        f.fma = __builtin_cpu_supports("fma");
        // F16C straight from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports lacks it.
        // The OS saving YMM state is covered by the avx2 check this is always paired with.
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        f.f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
        f.avx512f = __builtin_cpu_supports("avx512f");
        f.avx512bw = __builtin_cpu_supports("avx512bw");
        f.avx512vl = __builtin_cpu_supports("avx512vl");
        f.avx512dq = __builtin_cpu_supports("avx512dq");
        f.avx512vnni = __builtin_cpu_supports("avx512vnni");
        f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
        return f;
    }();
    return features;
}

CpuPath cpu_path() {
    static const CpuPath path = [] {
        const auto& f = detect_cpu_features();
        CpuPath best = CpuPath::scalar;
        if (f.avx2 && f.fma && f.f16c) best = CpuPath::avx2;
        if (best == CpuPath::avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) best = CpuPath::avx512;
        if (const char* cap = std::getenv("SLUICE_CPU")) {
            if (std::strcmp(cap, "scalar") == 0) return CpuPath::scalar;
            if (std::strcmp(cap, "avx2") == 0 && best != CpuPath::scalar) return CpuPath::avx2;
        }
        return best;
    }();
    return path;
}

}  // namespace sluice::cpu
