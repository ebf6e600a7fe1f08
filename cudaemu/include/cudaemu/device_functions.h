// cudaemu: the CUDA language inside kernels, for .cu sources compiled by g++ as C++.
// Qualifiers become plain C++; threadIdx/blockIdx/blockDim/gridDim are per-OS-thread variables
// the block scheduler sets before it resumes each thread's fiber; __syncthreads, warp shuffles,
// votes and __syncwarp suspend the calling fiber until the scheduler has matched its partners
// (see src/block.cpp), so a missing partner or a wrong mask is an error, not a silent value.
#pragma once

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

#include "cuda_runtime_api.h"
#include "vector_types.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__
#define __align__(n) alignas(n)
// Static shared memory: one copy per variable, in the section cudaemu_shared, which the scheduler
// fills with 0xff bytes (NaN floats) before every block and runs one block at a time; ASan puts
// redzones around each variable (-fsanitize-sections=cudaemu_shared). Keep kernels in an unnamed
// namespace: GCC drops the section of a static in a template with external linkage (comdat).
#define __shared__ __attribute__((section("cudaemu_shared"), aligned(16))) static

// The thread's coordinates; constinit so g++ reads them as plain initial-exec TLS.
extern thread_local constinit uint3 threadIdx __attribute__((tls_model("initial-exec")));
extern thread_local constinit uint3 blockIdx __attribute__((tls_model("initial-exec")));
extern thread_local constinit dim3 blockDim __attribute__((tls_model("initial-exec")));
extern thread_local constinit dim3 gridDim __attribute__((tls_model("initial-exec")));
inline constexpr int warpSize = 32;

namespace cudaemu::detail {

enum class WarpOp : int {
    sync, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, vote_all, vote_any, reduce_add, reduce_min, reduce_max
};
enum class BarrierOp : int { plain, count, and_, or_ };

// Suspends the calling kernel thread until its whole block reached a barrier; returns the
// combined predicate for the count/and/or forms.
int block_barrier(BarrierOp op, int predicate, std::source_location where);
// Suspends the calling lane until every non-exited lane named in mask made the same call;
// returns the lane's result (a shuffled value's bits, a ballot, a reduction).
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int param, int width, bool is_signed,
                         std::source_location where);
unsigned active_mask();
// Stops the kernel: the block is abandoned, the launch fails with `code` and the message.
[[noreturn]] void kernel_fault(cudaError_t code, const char* what, std::source_location where);
void* dynamic_shared_memory();

template <class T>
uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp exchange of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T>
T from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

}  // namespace cudaemu::detail

// ---- barriers and warp collectives
inline void __syncthreads(std::source_location w = std::source_location::current()) {
    cudaemu::detail::block_barrier(cudaemu::detail::BarrierOp::plain, 1, w);
}
inline int __syncthreads_count(int p, std::source_location w = std::source_location::current()) {
    return cudaemu::detail::block_barrier(cudaemu::detail::BarrierOp::count, p != 0, w);
}
inline int __syncthreads_and(int p, std::source_location w = std::source_location::current()) {
    return cudaemu::detail::block_barrier(cudaemu::detail::BarrierOp::and_, p != 0, w);
}
inline int __syncthreads_or(int p, std::source_location w = std::source_location::current()) {
    return cudaemu::detail::block_barrier(cudaemu::detail::BarrierOp::or_, p != 0, w);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location w = std::source_location::current()) {
    cudaemu::detail::warp_collective(cudaemu::detail::WarpOp::sync, mask, 0, 0, warpSize, false, w);
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              std::source_location w = std::source_location::current()) {
    using namespace cudaemu::detail;
    return from_bits<T>(warp_collective(WarpOp::shfl_idx, mask, to_bits(var), src_lane, width, false, w));
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 std::source_location w = std::source_location::current()) {
    using namespace cudaemu::detail;
    return from_bits<T>(warp_collective(WarpOp::shfl_up, mask, to_bits(var), int(delta), width, false, w));
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   std::source_location w = std::source_location::current()) {
    using namespace cudaemu::detail;
    return from_bits<T>(warp_collective(WarpOp::shfl_down, mask, to_bits(var), int(delta), width, false, w));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  std::source_location w = std::source_location::current()) {
    using namespace cudaemu::detail;
    return from_bits<T>(warp_collective(WarpOp::shfl_xor, mask, to_bits(var), lane_mask, width, false, w));
}
inline unsigned __ballot_sync(unsigned mask, int pred, std::source_location w = std::source_location::current()) {
    using namespace cudaemu::detail;
    return unsigned(warp_collective(WarpOp::ballot, mask, pred != 0, 0, warpSize, false, w));
}
inline int __any_sync(unsigned mask, int pred, std::source_location w = std::source_location::current()) {
    using namespace cudaemu::detail;
    return int(warp_collective(WarpOp::vote_any, mask, pred != 0, 0, warpSize, false, w));
}
inline int __all_sync(unsigned mask, int pred, std::source_location w = std::source_location::current()) {
    using namespace cudaemu::detail;
    return int(warp_collective(WarpOp::vote_all, mask, pred != 0, 0, warpSize, false, w));
}
inline unsigned __activemask() { return cudaemu::detail::active_mask(); }

#define CUDAEMU_REDUCE(NAME, OP)                                                                                \
    inline unsigned NAME(unsigned mask, unsigned v, std::source_location w = std::source_location::current()) { \
        using namespace cudaemu::detail;                                                                     \
        return unsigned(warp_collective(OP, mask, v, 0, warpSize, false, w));                                \
    }                                                                                                        \
    inline int NAME(unsigned mask, int v, std::source_location w = std::source_location::current()) {           \
        using namespace cudaemu::detail;                                                                     \
        return int(warp_collective(OP, mask, uint64_t(int64_t(v)), 0, warpSize, true, w));                   \
    }
CUDAEMU_REDUCE(__reduce_add_sync, WarpOp::reduce_add)
CUDAEMU_REDUCE(__reduce_min_sync, WarpOp::reduce_min)
CUDAEMU_REDUCE(__reduce_max_sync, WarpOp::reduce_max)
#undef CUDAEMU_REDUCE

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap(std::source_location w = std::source_location::current()) {
    cudaemu::detail::kernel_fault(cudaErrorLaunchFailure, "__trap()", w);
}

// ---- loads through the read-only cache: checked for the alignment the hardware requires
template <class T>
T __ldg(const T* p, std::source_location w = std::source_location::current()) {
    if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0)
        cudaemu::detail::kernel_fault(cudaErrorMisalignedAddress, "__ldg from a misaligned address", w);
    return *p;
}

// ---- atomics (device memory and shared memory alike)
template <class T>
T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
T atomicSub(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <class T>
T atomicExch(T* p, T v) {
    return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
    std::atomic_ref<T>(*p).compare_exchange_strong(compare, v);
    return compare;  // the old value, whether or not it was swapped
}
template <class T>
T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
T atomicAnd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_and(v);
}
template <class T>
T atomicOr(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_or(v);
}
template <class T>
T atomicXor(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_xor(v);
}
// ((old >= limit) ? 0 : old + 1) and ((old == 0 || old > limit) ? limit : old - 1), as CUDA defines.
inline unsigned atomicInc(unsigned* p, unsigned limit) {
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (!a.compare_exchange_weak(old, old >= limit ? 0u : old + 1)) {
    }
    return old;
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (!a.compare_exchange_weak(old, (old == 0 || old > limit) ? limit : old - 1)) {
    }
    return old;
}

// ---- integer and bit intrinsics
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }
inline int __popc(unsigned v) { return std::popcount(v); }
inline int __popcll(unsigned long long v) { return std::popcount(v); }
inline int __clz(int v) { return std::countl_zero(unsigned(v)); }
inline int __clzll(long long v) { return std::countl_zero((unsigned long long)v); }
inline int __ffs(int v) { return v == 0 ? 0 : std::countr_zero(unsigned(v)) + 1; }
inline int __ffsll(long long v) { return v == 0 ? 0 : std::countr_zero((unsigned long long)v) + 1; }
inline unsigned __brev(unsigned v) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
    return r;
}
// Byte i of the result is byte (s >> 4i) & 7 of the 8-byte value {y, x} (x the low word).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = (uint64_t(y) << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
// Four-way byte dot product with 32-bit accumulate (dp4a).
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) c += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
    return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xff) * ((b >> (8 * i)) & 0xff);
    return c;
}
inline int __dp4a(char4 a, char4 b, int c) { return __dp4a(std::bit_cast<int>(a), std::bit_cast<int>(b), c); }
// Funnel shift right: the 64-bit {hi, lo} shifted right by (shift & 31), low 32 bits.
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
    return unsigned(((uint64_t(hi) << 32) | lo) >> (shift & 31));
}
// Float to int, rounding to nearest even (cvt.rni.s32.f32): saturates, NaN gives 0.
inline int __float2int_rn(float x) {
    if (x != x) return 0;
    if (x >= 2147483647.0f) return 2147483647;
    if (x <= -2147483648.0f) return int(-2147483647 - 1);
    return int(std::nearbyint(x));  // the default rounding mode: to nearest even
}
inline int __float2int_rz(float x) {
    if (x != x) return 0;
    if (x >= 2147483647.0f) return 2147483647;
    if (x <= -2147483648.0f) return int(-2147483647 - 1);
    return int(x);
}
inline int __mul24(int a, int b) { return int((int64_t(a) << 40 >> 40) * (int64_t(b) << 40 >> 40)); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffff) * (b & 0xffffff); }
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline long long __mul64hi(long long a, long long b) { return (long long)((__int128(a) * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)((unsigned __int128)(a)*b >> 64);
}

// ---- math: the fast intrinsics computed at full precision (within their documented error)
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline void __sincosf(float x, float* s, float* c) {
    *s = std::sin(x);
    *c = std::cos(x);
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
