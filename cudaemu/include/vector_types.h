// cudaemu: CUDA's built-in vector types with CUDA's sizes and alignments (a float4 / uint4 is
// 16-byte aligned, so a misaligned vector load is undefined behaviour UBSan reports, as the
// hardware faults on it), dim3, and the make_* constructors.
#pragma once

#define CUDAEMU_VEC2(T, name, align) \
    struct alignas(align) name {     \
        T x, y;                      \
    };
#define CUDAEMU_VEC3(T, name) \
    struct name {             \
        T x, y, z;            \
    };
#define CUDAEMU_VEC4(T, name, align) \
    struct alignas(align) name {     \
        T x, y, z, w;                \
    };

CUDAEMU_VEC2(char, char2, 2)
CUDAEMU_VEC2(unsigned char, uchar2, 2)
CUDAEMU_VEC4(signed char, char4, 4)
CUDAEMU_VEC4(unsigned char, uchar4, 4)
CUDAEMU_VEC2(short, short2, 4)
CUDAEMU_VEC2(unsigned short, ushort2, 4)
CUDAEMU_VEC4(short, short4, 8)
CUDAEMU_VEC4(unsigned short, ushort4, 8)
CUDAEMU_VEC2(int, int2, 8)
CUDAEMU_VEC2(unsigned int, uint2, 8)
CUDAEMU_VEC3(int, int3)
CUDAEMU_VEC3(unsigned int, uint3)
CUDAEMU_VEC4(int, int4, 16)
CUDAEMU_VEC4(unsigned int, uint4, 16)
CUDAEMU_VEC2(long long, longlong2, 16)
CUDAEMU_VEC2(unsigned long long, ulonglong2, 16)
CUDAEMU_VEC2(float, float2, 8)
CUDAEMU_VEC3(float, float3)
CUDAEMU_VEC4(float, float4, 16)
CUDAEMU_VEC2(double, double2, 16)

#undef CUDAEMU_VEC2
#undef CUDAEMU_VEC3
#undef CUDAEMU_VEC4

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

inline constexpr int2 make_int2(int x, int y) { return {x, y}; }
inline constexpr uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline constexpr int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline constexpr uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
inline constexpr uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline constexpr float2 make_float2(float x, float y) { return {x, y}; }
inline constexpr float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline constexpr float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline constexpr char4 make_char4(signed char x, signed char y, signed char z, signed char w) { return {x, y, z, w}; }
inline constexpr uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) {
    return {x, y, z, w};
}
inline constexpr double2 make_double2(double x, double y) { return {x, y}; }
