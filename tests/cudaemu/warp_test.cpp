// The emulated warp: shuffles (index, up, down, xor, with sub-warp widths), votes, ballots,
// reductions and __syncwarp exchange among exactly the lanes a mask names; a mask without the
// caller, a lane at another collective, or a read from a lane that is not taking part is an error.
#include <algorithm>

#include "emu_test.hpp"

using namespace emu_test;

namespace {

// out[k][t]: lane t's result of shuffle k.
__global__ void shuffles_kernel(int* out, int n) {
    const int lane = int(threadIdx.x % 32);
    const int v = int(threadIdx.x) * 10;
    int* o = out;
    o[threadIdx.x] = __shfl_sync(0xffffffffu, v, 5);
    o += n;
    o[threadIdx.x] = __shfl_sync(0xffffffffu, v, lane + 3, 8);  // source wraps inside each 8-lane group
    o += n;
    o[threadIdx.x] = __shfl_up_sync(0xffffffffu, v, 3);
    o += n;
    o[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 5, 16);
    o += n;
    o[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 9);
    o += n;
    o[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 4, 4);  // a later 4-lane group: own value; earlier: theirs
}

__global__ void votes_kernel(unsigned* out) {
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
    const int all = __all_sync(0xffffffffu, lane < 40);
    const int any = __any_sync(0xffffffffu, lane == 31);
    const unsigned sum = __reduce_add_sync(0xffffffffu, lane + warp);
    const unsigned mx = __reduce_max_sync(0xffffffffu, (lane * 13) % 32);
    __syncwarp();
    if (lane == 0) {
        out[warp * 5 + 0] = ballot;
        out[warp * 5 + 1] = unsigned(all);
        out[warp * 5 + 2] = unsigned(any);
        out[warp * 5 + 3] = sum;
        out[warp * 5 + 4] = mx;
    }
}

// Two half-warps in different branches, each exchanging only among itself.
__global__ void half_warps_kernel(int* out) {
    const int lane = int(threadIdx.x % 32);
    int v = lane;
    if (lane < 16) {
        for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0x0000ffffu, v, o);
    } else {
        for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffff0000u, v, o);
    }
    out[threadIdx.x] = v;
}

// A partial last warp (40 threads: lanes 0-7 of warp 1) voting over the lanes that exist.
__global__ void partial_warp_kernel(unsigned* out) {
    const unsigned b = __ballot_sync(0xffffffffu, 1);
    if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = b;
}

__global__ void mask_without_caller_kernel(float* out) {
    float v = float(threadIdx.x);
    v += __shfl_xor_sync(0x0000ffffu, v, 1);  // called by all 32 lanes
    out[threadIdx.x] = v;
}

__global__ void reads_exited_lane_kernel(float* out) {
    if (threadIdx.x >= 16) return;
    const float v = __shfl_down_sync(0xffffffffu, float(threadIdx.x), 8);  // lanes 8-15 read 16-23
    out[threadIdx.x] = v;
}

__global__ void mismatched_collectives_kernel(int* out) {
    int v = int(threadIdx.x);
    if (threadIdx.x % 2) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else v = int(__ballot_sync(0xffffffffu, v > 3));
    out[threadIdx.x] = v;
}

__global__ void warp_vs_barrier_kernel(int* out) {
    int v = int(threadIdx.x);
    if (threadIdx.x < 32) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else if (threadIdx.x == 32) v = __shfl_xor_sync(0xffffffffu, v, 1);  // lanes 1-31 of warp 1 never come
    __syncthreads();
    out[threadIdx.x] = v;
}

}  // namespace

TEST_CASE("shuffles return the source lane's value with CUDA's width and range rules") {
    const int n = 64;
    auto* out = device_array<int>(6 * n);
    launch_kernel(shuffles_kernel, 1, n, 0, nullptr, out, n);
    const auto got = download(out, 6 * n);
    for (int t = 0; t < n; ++t) {
        CAPTURE(t);
        const int lane = t % 32, warp_base = t - lane;
        auto v = [&](int l) { return (warp_base + l) * 10; };
        CHECK(got[size_t(0 * n + t)] == v(5));
        CHECK(got[size_t(1 * n + t)] == v(lane / 8 * 8 + (lane + 3) % 8));
        CHECK(got[size_t(2 * n + t)] == (lane >= 3 ? v(lane - 3) : v(lane)));
        CHECK(got[size_t(3 * n + t)] == (lane % 16 + 5 < 16 ? v(lane + 5) : v(lane)));
        CHECK(got[size_t(4 * n + t)] == v(lane ^ 9));
        CHECK(got[size_t(5 * n + t)] == ((lane ^ 4) / 4 > lane / 4 ? v(lane) : v(lane ^ 4)));
    }
    CHECK(device_error().empty());
    cudaFree(out);
}

TEST_CASE("ballot, all, any and the warp reductions see every lane of the mask") {
    auto* out = device_array<unsigned>(10);
    launch_kernel(votes_kernel, 1, 64, 0, nullptr, out);
    const auto got = download(out, 10);
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; l += 3) ballot |= 1u << l;
    for (unsigned w = 0; w < 2; ++w) {
        CHECK(got[w * 5 + 0] == ballot);
        CHECK(got[w * 5 + 1] == 1u);
        CHECK(got[w * 5 + 2] == 1u);
        CHECK(got[w * 5 + 3] == 31u * 32u / 2u + 32u * w);
        CHECK(got[w * 5 + 4] == 31u);
    }
    cudaFree(out);
}

TEST_CASE("half-warps with disjoint masks exchange independently, in every thread order") {
    for (auto order : kOrders) {
        ScopedSchedule s(order, 3);
        auto* out = device_array<int>(32);
        launch_kernel(half_warps_kernel, 1, 32, 0, nullptr, out);
        const auto got = download(out, 32);
        for (int l = 0; l < 32; ++l) CHECK(got[size_t(l)] == (l < 16 ? 120 : 376));
        CHECK(device_error().empty());
        cudaFree(out);
    }
}

TEST_CASE("a partial last warp votes with the lanes the block has") {
    auto* out = device_array<unsigned>(2);
    launch_kernel(partial_warp_kernel, 1, 40, 0, nullptr, out);
    const auto got = download(out, 2);
    CHECK(got[0] == 0xffffffffu);
    CHECK(got[1] == 0xffu);
    cudaFree(out);
}

TEST_CASE("a shuffle whose mask leaves out the calling lane is an error") {
    auto* out = device_array<float>(32);
    launch_kernel(mask_without_caller_kernel, 1, 32, 0, nullptr, out);
    const std::string e = device_error();
    CHECK(e.find("does not include the calling lane") != std::string::npos);
    CHECK(e.find("__shfl_xor_sync") != std::string::npos);
    cudaFree(out);
}

TEST_CASE("reading an exited lane through a shuffle is an error (its value is undefined)") {
    auto* out = device_array<float>(32);
    launch_kernel(reads_exited_lane_kernel, 1, 32, 0, nullptr, out);
    CHECK(device_error().find("has exited") != std::string::npos);
    cudaFree(out);
}

TEST_CASE("lanes of one mask at different collectives are an error") {
    auto* out = device_array<int>(32);
    launch_kernel(mismatched_collectives_kernel, 1, 32, 0, nullptr, out);
    CHECK(device_error().find("named in the mask calls") != std::string::npos);
    launch_kernel(warp_vs_barrier_kernel, 1, 64, 0, nullptr, out);
    CHECK(device_error().find("__syncthreads") != std::string::npos);
    cudaFree(out);
}
