// Which vector extensions this CPU has, read once; kernels pick their AVX-512 / AVX2 / scalar
// path from it (the binary is built for baseline x86-64 and dispatches at run time).
#pragma once

namespace sluice::cpu {

struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;
    bool avx512bw = false;
    bool avx512vl = false;
    bool avx512dq = false;
    bool avx512vnni = false;
    bool avx512bf16 = false;
};

const CpuFeatures& detect_cpu_features();

// SLUICE_CPU=avx2 or SLUICE_CPU=scalar in the environment caps the path (tests use it to
// exercise the fallbacks on an AVX-512 machine).
enum class CpuPath { scalar, avx2, avx512 };
CpuPath cpu_path();

}  // namespace sluice::cpu
