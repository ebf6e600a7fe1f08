// cudaemu: CUDA's __half for the emulated device: storage, conversions (round to nearest even,
// CUDA's NaN codes) and arithmetic through f32, rounded back to half after every operation.
#pragma once

#include "cudaemu/float_codes.h"

struct __half_raw {
    unsigned short x;
};

struct __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(__half_raw r) : __x(r.x) {}
    constexpr __half(float f) : __x(cudaemu::codes::f32_to_f16(f)) {}
    constexpr __half(double f) : __x(cudaemu::codes::f32_to_f16(float(f))) {}
    constexpr __half(int v) : __x(cudaemu::codes::f32_to_f16(float(v))) {}
    constexpr operator float() const { return cudaemu::codes::f16_to_f32(__x); }
    constexpr operator __half_raw() const { return {__x}; }
};

struct alignas(4) __half2 {
    __half x, y;
};

inline __half __ushort_as_half(unsigned short v) { return __half_raw{v}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short v) { return __half_raw{(unsigned short)v}; }
inline short __half_as_short(__half h) { return short(h.__x); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return {__half(a), __half(a)}; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __half __hadd(__half a, __half b) { return __half(float(a) + float(b)); }
inline __half __hsub(__half a, __half b) { return __half(float(a) - float(b)); }
inline __half __hmul(__half a, __half b) { return __half(float(a) * float(b)); }
inline __half __hdiv(__half a, __half b) { return __half(float(a) / float(b)); }
inline __half __hfma(__half a, __half b, __half c) { return __half(float(double(a) * double(b) + double(c))); }
inline __half __hneg(__half a) { return __half_raw{(unsigned short)(a.__x ^ 0x8000)}; }
inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator/(__half a, __half b) { return __hdiv(a, b); }
inline __half operator-(__half a) { return __hneg(a); }
