// The portable path: the shared kernel bodies with one-lane "vectors" (SLUICE_CPU=scalar, or a
// CPU without AVX2/FMA/F16C).
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/half.hpp"
#include "kernels/block_type.hpp"
#include "kernels/dequantize.hpp"
#include "kernels/cpu/kernel_paths.hpp"

namespace sluice::cpu::detail {
namespace scalar_path {

using F = float;
constexpr CpuPath kPath = CpuPath::scalar;

struct Simd {
    static constexpr int W = 1;
    static constexpr int kTileRows = 4;
    static constexpr int kTileTokens = 4;
    static constexpr int kSumTileVectors = 1;
    static constexpr int kScoreTileKeys = 1;
    static F zero() { return 0.0f; }
    static F set1(float v) { return v; }
    static F load(const float* p) { return *p; }
    static void store(float* p, F v) { *p = v; }
    static F load_f16(const uint16_t* p) { return f16_to_f32(*p); }
    static F load_bf16(const uint16_t* p) { return bf16_to_f32(*p); }
    // An e4m3fn byte as f32, divided by 256 (as the vector paths; exact, a power-of-two scale).
    static F load_fp8(const uint8_t* p) { return fp8_e4m3_to_f32(*p) * (1.0f / 256.0f); }
    static F add(F a, F b) { return a + b; }
    static F sub(F a, F b) { return a - b; }
    static F mul(F a, F b) { return a * b; }
    static F div(F a, F b) { return a / b; }
    static F fmadd(F a, F b, F c) { return a * b + c; }
    static F max(F a, F b) { return a > b ? a : b; }
    static F min(F a, F b) { return a < b ? a : b; }
    static float reduce_add(F a) { return a; }
    static float reduce_max(F a) { return a; }
    static F round(F a) { return std::nearbyint(a); }
    static F pow2n(F n) { return std::bit_cast<float>(uint32_t(int32_t(n) + 127) << 23); }
    static F zero_below(F x, float threshold, F y) { return x >= threshold ? y : 0.0f; }
};

#include "kernels/cpu/simd_kernels.inc"

}  // namespace scalar_path

const PathKernels& scalar_kernels() { return scalar_path::kKernels; }

}  // namespace sluice::cpu::detail
