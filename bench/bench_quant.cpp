// GEMV GB/s of quantised weight bytes on DeepSeek-shaped expert matrices: the fused kernels
// (quant_dot.hpp) beside the generic dequantise-then-dot path and a plain memory read loop over
// a buffer of the same size, in the same run (ratio = GEMV GB/s / read GB/s).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/half.hpp"
#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/quant_dot.hpp"

using namespace sluice;
using Clock = std::chrono::steady_clock;

namespace {

template <typename F>
double best_seconds(F&& f, int reps) {
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
        const auto t0 = Clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return best;
}

}  // namespace

int main() {
    const std::pair<int64_t, int64_t> shapes[] = {{2048, 7168}, {7168, 2048}};
    std::printf("%-6s %-11s %3s %12s %12s %12s %8s\n", "type", "shape", "thr", "fused GB/s",
                "dequant GB/s", "read GB/s", "fused/read");
    for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
            for (const auto& [rows, cols] : shapes) {
                const auto& tr = block_type(type);
                const int64_t n_blocks = rows * cols / tr.block_elems;
                std::vector<uint8_t> bytes(size_t(n_blocks * tr.block_bytes));
                std::mt19937 rng(1);
                for (auto& b : bytes) b = uint8_t(rng());
                for (int64_t b = 0; b < n_blocks; ++b) {
                    const uint16_t d = f32_to_f16(0.01f);
                    std::memcpy(bytes.data() + b * tr.block_bytes + (type == DType::Q6_K ? 208 : 0), &d, 2);
                    if (type == DType::Q4_K || type == DType::Q5_K) std::memcpy(bytes.data() + b * tr.block_bytes + 2, &d, 2);
                }
                Matrix w;
                w.type = type;
                w.rows = rows;
                w.cols = cols;
                w.data = bytes.data();
                std::vector<float> x(static_cast<size_t>(cols), 0.5f), y(static_cast<size_t>(rows));
                const double gb = double(bytes.size()) / 1e9;
                const double fused = best_seconds([&] { cpu::quant_gemm(w, x.data(), cols, 1, y.data(), rows, pool); }, 20);
                const double deq = best_seconds([&] { cpu::gemv(w, x.data(), y.data(), pool); }, 5);
                // read loop: the same bytes, summed as 64-bit words over the same threads
                const auto* words = reinterpret_cast<const uint64_t*>(bytes.data());
                const int64_t n_words = int64_t(bytes.size() / 8);
                std::vector<uint64_t> partial(size_t(threads) * 8);
                const double read = best_seconds([&] {
                    pool.parallel_for(n_words, [&](int64_t a, int64_t b, int tid) {
                        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                        int64_t i = a;
                        for (; i + 4 <= b; i += 4) { s0 += words[i]; s1 += words[i + 1]; s2 += words[i + 2]; s3 += words[i + 3]; }
                        for (; i < b; ++i) s0 += words[i];
                        partial[size_t(tid) * 8] += s0 + s1 + s2 + s3;
                    }, 4096);
                }, 20);
                char shape[64];
                std::snprintf(shape, sizeof shape, "%lldx%lld", (long long)rows, (long long)cols);
                std::printf("%-6s %-11s %3d %12.2f %12.2f %12.2f %8.2f\n", std::string(dtype_name(type)).c_str(),
                            shape, threads, gb / fused, gb / deq, gb / read, read / fused);
            }
        }
    }
}
