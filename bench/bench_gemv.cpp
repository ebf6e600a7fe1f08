// GEMV / GEMM throughput of the CPU kernels on DeepSeek-shaped matrices, beside the peer that
// bounds batch-1 decode: a plain parallel memory-read loop over the same bytes, same run.
// Prints tables; never asserts. Usage: bench_gemv [--quick]
#include <emmintrin.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/half.hpp"
#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/quant_dot.hpp"

using namespace sluice;

namespace {

using Clock = std::chrono::steady_clock;

// The working set rotates over enough copies of the matrix to exceed any last-level cache, so
// both columns measure DRAM, not L3.
constexpr int64_t kWorkingSetBytes = int64_t(768) << 20;
constexpr double kMinSeconds = 0.3;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// The peer: every thread sums its contiguous share of the buffer with 16-byte loads, in four
// interleaved streams (as many as a GEMV row tile reads at once, so both get the same prefetch help).
double read_bandwidth_gb_per_s(const std::byte* data, int64_t bytes, ThreadPool& pool) {
    std::vector<float> sinks(size_t(pool.size()) * 16, 0.0f);
    const int64_t n_vectors = bytes / 16;
    int64_t total = 0;
    const auto start = Clock::now();
    do {
        pool.parallel_for(n_vectors, [&](int64_t begin, int64_t end, int thread) {
            const __m128* v = reinterpret_cast<const __m128*>(data);
            const int64_t quarter = (end - begin) / 4;
            const __m128* s0 = v + begin;
            const __m128* s1 = s0 + quarter;
            const __m128* s2 = s1 + quarter;
            const __m128* s3 = s2 + quarter;
            __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t i = 0; i < quarter; ++i) {
                a0 = _mm_add_ps(a0, s0[i]);
                a1 = _mm_add_ps(a1, s1[i]);
                a2 = _mm_add_ps(a2, s2[i]);
                a3 = _mm_add_ps(a3, s3[i]);
            }
            for (int64_t i = begin + 4 * quarter; i < end; ++i) a0 = _mm_add_ps(a0, v[i]);
            _mm_storeu_ps(&sinks[size_t(thread) * 16], _mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3)));
        }, 64);
        total += bytes;
    } while (seconds_since(start) < kMinSeconds);
    const double elapsed = seconds_since(start);
    if (sinks[0] == 12345.0f) std::puts("");  // keeps the sums alive
    return double(total) / elapsed / 1e9;
}

struct Copies {
    AlignedBuffer buffer;
    std::vector<float> scales;  // FP8 block scales, shared by all copies
    int64_t matrix_bytes = 0;
    int64_t n_copies = 0;
};

// Fills one copy with finite values of the type (scale-sized random bytes for quantised types)
// and repeats it across the working set.
Copies make_copies(DType type, int64_t rows, int64_t cols) {
    Copies c;
    c.matrix_bytes = row_bytes(type, cols) * rows;
    c.n_copies = std::max<int64_t>(1, kWorkingSetBytes / c.matrix_bytes);
    c.buffer.allocate(size_t(c.matrix_bytes * c.n_copies));
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    std::byte* first = c.buffer.data();
    const int64_t n = rows * cols;
    if (type == DType::F32) {
        float* f = reinterpret_cast<float*>(first);
        for (int64_t i = 0; i < n; ++i) f[i] = value(rng);
    } else if (type == DType::F16 || type == DType::BF16) {
        uint16_t* h = reinterpret_cast<uint16_t*>(first);
        for (int64_t i = 0; i < n; ++i) h[i] = type == DType::F16 ? f32_to_f16(value(rng)) : f32_to_bf16(value(rng));
    } else {
        std::uniform_int_distribution<int> byte(0, 0x3b);  // keeps embedded scales finite, fp8 non-NaN
        for (int64_t i = 0; i < c.matrix_bytes; ++i) first[i] = std::byte(byte(rng));
    }
    for (int64_t k = 1; k < c.n_copies; ++k) std::memcpy(first + k * c.matrix_bytes, first, size_t(c.matrix_bytes));
    c.scales.assign(size_t(((rows + 127) / 128) * ((cols + 127) / 128)), 0.5f);
    return c;
}

// Seconds per call of gemm over n_tokens, rotating through the copies.
double seconds_per_gemm(const Copies& c, DType type, int64_t rows, int64_t cols, int64_t n_tokens,
                        const std::vector<float>& x, std::vector<float>& y, ThreadPool& pool) {
    int64_t calls = 0;
    const auto start = Clock::now();
    do {
        const Matrix w{type, rows, cols, c.buffer.data() + (calls % c.n_copies) * c.matrix_bytes, c.scales.data(), 0};
        cpu::gemm(w, x.data(), cols, n_tokens, y.data(), rows, pool);
        ++calls;
    } while (seconds_since(start) < kMinSeconds || calls < 2);
    return seconds_since(start) / double(calls);
}

}  // namespace

int main(int argc, char** argv) {
    bool quick = false, gemm_only = false;
    std::string only_type;  // --type NAME: the GEMM table for that type alone
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0) quick = true;
        else if (std::strcmp(argv[i], "--gemm") == 0) gemm_only = true;  // only the prefill GEMM table
        else if (std::strcmp(argv[i], "--type") == 0 && i + 1 < argc) only_type = argv[++i];
    }
    std::printf("sluice bench_gemv: kernel path %s (SLUICE_CPU caps it), working set >= %lld MiB per row\n\n",
                cpu::detail::path_name(cpu::cpu_path()), (long long)(kWorkingSetBytes >> 20));

    std::vector<DType> types{DType::F32, DType::F16, DType::BF16, DType::FP8_E4M3_B128};
    for (uint32_t id = 0; id < 2000; ++id) {  // plus every other type with a dequantiser (generic path)
        const BlockTypeTraits* t = find_block_type(id);
        if (t && t->dequantize_row && t->type != DType::F32 && t->type != DType::F16 && t->type != DType::BF16 &&
            t->type != DType::FP8_E4M3_B128 && t->type != DType::F64 && t->block_elems > 1)
            types.push_back(t->type);
    }
    const int64_t shapes[][2] = {{2048, 7168}, {7168, 2048}, {18432, 7168}};
    const int thread_counts[] = {1, 2};

    std::printf("GEMV (batch 1): weight bytes streamed per second vs. a plain read of the same working set\n");
    std::printf("%-14s %-12s %7s %10s %12s %12s %7s\n", "type", "shape", "threads", "us/call", "gemv GB/s",
                "read GB/s", "ratio");
    for (DType type : types) {
        if (gemm_only) break;
        for (const auto& shape : shapes) {
            if (quick && shape[0] == 18432) continue;
            const int64_t rows = shape[0], cols = shape[1];
            if (!row_fits_blocks(type, cols)) continue;
            Copies c = make_copies(type, rows, cols);
            std::vector<float> x(size_t(cols), 0.5f), y(static_cast<size_t>(rows));
            for (int threads : thread_counts) {
                ThreadPool pool(threads);
                const double gemv_s = seconds_per_gemm(c, type, rows, cols, 1, x, y, pool);
                const double gemv_gb_per_s = double(c.matrix_bytes) / gemv_s / 1e9;
                const double read_gb_per_s =
                    read_bandwidth_gb_per_s(c.buffer.data(), c.matrix_bytes * c.n_copies, pool);
                const std::string shape_name = std::to_string(rows) + "x" + std::to_string(cols);
                std::printf("%-14s %-12s %7d %10.1f %12.2f %12.2f %7.2f\n", std::string(dtype_name(type)).c_str(),
                            shape_name.c_str(), threads, gemv_s * 1e6, gemv_gb_per_s, read_gb_per_s,
                            gemv_gb_per_s / read_gb_per_s);
            }
        }
    }

    std::printf("\nGEMM (prefill, 2048x7168, weights cycled through >= 768 MiB so they come from DRAM as streamed\n"
                "experts do): one call over n tokens vs. n separate GEMVs; K-quants on AVX-512 also one row per\n"
                "kernel call (1-row) vs. four (what runs)\n");
    std::printf("%-14s %7s %7s %12s %12s %12s %9s %12s %9s\n", "type", "tokens", "threads", "ms/call", "GFLOP/s",
                "n*gemv ms", "speedup", "1-row ms", "4 vs 1");
    for (DType type : {DType::F32, DType::BF16, DType::FP8_E4M3_B128, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                       DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
        if (!only_type.empty() && only_type != dtype_name(type)) continue;
        const bool k_quant = block_type(type).block_elems == 256 && cpu::cpu_path() == cpu::CpuPath::avx512;
        const int64_t rows = 2048, cols = 7168;
        Copies c = make_copies(type, rows, cols);
        for (int threads : thread_counts) {
            ThreadPool pool(threads);
            std::vector<float> x1(size_t(cols), 0.5f), y1(static_cast<size_t>(rows));
            const double gemv_s = seconds_per_gemm(c, type, rows, cols, 1, x1, y1, pool);
            for (int64_t n_tokens : {1, 4, 8, 16, 64}) {
                if (n_tokens == 1 && !k_quant) continue;  // the GEMV table has it
                std::vector<float> x(size_t(n_tokens * cols), 0.25f), y(size_t(n_tokens * rows));
                const double s = seconds_per_gemm(c, type, rows, cols, n_tokens, x, y, pool);
                double one_row_s = 0;
                if (k_quant) {
                    cpu::set_quant_dot_four_rows(false);
                    one_row_s = seconds_per_gemm(c, type, rows, cols, n_tokens, x, y, pool);
                    cpu::set_quant_dot_four_rows(true);
                }
                std::printf("%-14s %7lld %7d %12.2f %12.1f %12.2f %9.2f", std::string(dtype_name(type)).c_str(),
                            (long long)n_tokens, threads, s * 1e3, 2.0 * rows * cols * n_tokens / s / 1e9,
                            gemv_s * n_tokens * 1e3, gemv_s * n_tokens / s);
                if (k_quant) std::printf(" %12.2f %9.2f", one_row_s * 1e3, one_row_s / s);
                std::printf("\n");
            }
        }
    }

    // Attention for one decoded token: absorbed MLA over the 576-wide latent cache beside the
    // decompressed MHA form over per-head k_nope / v [128 + 128] (expanded beforehand, untimed).
    std::printf("\nMLA attention, 1 decoded token, 32 heads (V3 has 128): absorbed vs decompressed over a prebuilt K/V cache\n");
    std::printf("%7s %7s %14s %14s %9s\n", "n_ctx", "threads", "absorbed us", "decomp. us", "speedup");
    const int n_heads = 32, kv_rank = 512, rope_dim = 64;
    for (int64_t n_ctx : {512, 4096}) {
        if (quick && n_ctx > 512) continue;
        std::mt19937 rng(9);
        std::uniform_real_distribution<float> value(-1.0f, 1.0f);
        auto random_vector = [&](int64_t n) {
            std::vector<float> v(static_cast<size_t>(n));
            for (auto& e : v) e = value(rng);
            return v;
        };
        const std::vector<float> cache_latent = random_vector(n_ctx * kv_rank), cache_rope = random_vector(n_ctx * rope_dim);
        const std::vector<float> q_latent = random_vector(n_heads * kv_rank), q_rope = random_vector(n_heads * rope_dim);
        const std::vector<float> kv = random_vector(n_ctx * n_heads * 256);  // [k_nope 128 | v 128] per head
        const std::vector<float> q = random_vector(n_heads * 192);
        std::vector<float> running_max(static_cast<size_t>(n_heads)), running_sum(static_cast<size_t>(n_heads));
        std::vector<float> out_latent(size_t(n_heads * kv_rank)), out_v(size_t(n_heads * 128));
        const cpu::AttentionShape shape{n_heads, kv_rank, rope_dim, 0.1352338f};
        const cpu::DecompressedAttentionShape naive_shape{n_heads, 128, rope_dim, 128, 192, 0.1352338f};
        for (int threads : thread_counts) {
            ThreadPool pool(threads);
            std::vector<float> scratch(size_t(std::max(
                cpu::attention_scratch_floats(shape, n_ctx, pool.size()),
                cpu::decompressed_attention_scratch_floats(naive_shape, n_ctx, pool.size()))));
            auto time_us = [&](auto&& call) {
                int64_t calls = 0;
                const auto start = Clock::now();
                do {
                    call();
                    ++calls;
                } while (seconds_since(start) < kMinSeconds);
                return seconds_since(start) / double(calls) * 1e6;
            };
            const double absorbed_us = time_us([&] {
                cpu::mla_attention_absorbed(shape, 1, q_latent.data(), q_rope.data(), cache_latent.data(),
                                            cache_rope.data(), &n_ctx, out_latent.data(), scratch.data(), pool);
            });
            const double naive_us = time_us([&] {
                cpu::mla_decompressed_begin(naive_shape, 1, out_v.data(), running_max.data(), running_sum.data());
                cpu::mla_attention_decompressed_block(naive_shape, 1, q.data(), q_rope.data(), kv.data(),
                                                      cache_rope.data(), 0, n_ctx, &n_ctx, out_v.data(),
                                                      running_max.data(), running_sum.data(), scratch.data(), pool);
                cpu::mla_decompressed_end(naive_shape, 1, out_v.data(), running_sum.data());
            });
            std::printf("%7lld %7d %14.1f %14.1f %9.2f\n", (long long)n_ctx, threads, absorbed_us, naive_us,
                        naive_us / absorbed_us);
        }
    }
    return 0;
}
