// cudaemu: CUDA's __nv_fp8_e4m3 (OCP e4m3fn: no infinities, NaN 0x7f/0xff) for the emulated
// device; conversions from f32 round to nearest even and saturate to +-448 as CUDA's do.
#pragma once

#include <cstdlib>

#include "cuda_fp16.h"
#include "cudaemu/float_codes.h"

typedef unsigned char __nv_fp8_storage_t;
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };

struct __nv_fp8_e4m3 {
    __nv_fp8_storage_t __x;
    __nv_fp8_e4m3() = default;
    explicit constexpr __nv_fp8_e4m3(float f) : __x(cudaemu::codes::f32_to_e4m3(f)) {}
    explicit constexpr __nv_fp8_e4m3(double f) : __x(cudaemu::codes::f32_to_e4m3(float(f))) {}
    explicit constexpr operator float() const { return cudaemu::codes::e4m3_to_f32(__x); }
};

// Only e4m3 with saturation is modelled (sluice reads no e5m2); anything else stops the program.
inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float f, __nv_saturation_t sat, __nv_fp8_interpretation_t kind) {
    if (sat != __NV_SATFINITE || kind != __NV_E4M3) std::abort();
    return cudaemu::codes::f32_to_e4m3(f);
}
inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t b, __nv_fp8_interpretation_t kind) {
    if (kind != __NV_E4M3) std::abort();
    return {cudaemu::codes::f32_to_f16(cudaemu::codes::e4m3_to_f32(b))};
}
