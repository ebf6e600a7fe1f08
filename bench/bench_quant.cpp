// Fused quantised GEMV / GEMM speed on DeepSeek-V3 expert shapes, per block type and path, in GB/s
// of weight bytes: beside the dequantise-then-dot path (--exact-dot) and a plain memory read loop
// over the same bytes in the same run (fused/read = how close to a memory-bound kernel). Two
// working sets: "hot" (one matrix, re-read: it sits in L2/L3) and "dram" (a ring of copies larger
// than the last-level cache, each rep walks all of them once, at 1 and 32 tokens: a streamed expert
// arrives cold, and 32 is a 1024-token step's tokens per expert). GEMM rows (n_tokens > 1) report
// the weight bytes per pass and the time per token. Best of N: the machine is shared, so noisy.
//   bench_quant [--threads 1,2] [--types Q8_0,Q2_K,...] [--no-dram] [--paths]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <ctime>
#include <vector>

#include "core/half.hpp"
#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/quant_dot.hpp"

using namespace sluice;
using Clock = std::chrono::steady_clock;

namespace {

double process_cpu_seconds() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Best wall time of reps runs; also the best CPU time of the process per thread (the time the
// threads actually ran: less disturbed by the other jobs on a shared machine, and the pool does
// not spin, so idle waits do not count).
double g_last_cpu_seconds = 0;
template <typename F>
double best_seconds(F&& f, int reps, int threads = 1) {
    double best = 1e30, best_cpu = 1e30;
    for (int i = 0; i < reps; ++i) {
        const double c0 = process_cpu_seconds();
        const auto t0 = Clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
        best_cpu = std::min(best_cpu, (process_cpu_seconds() - c0) / threads);
    }
    g_last_cpu_seconds = best_cpu;
    return best;
}

// Offsets of the f16 d (and dmin, or -1) inside a block: random bits there would give inf / NaN.
std::pair<int, int> scale_offsets(DType type) {
    switch (type) {
        case DType::Q2_K: return {80, 82};
        case DType::Q3_K: return {108, -1};
        case DType::Q4_K: case DType::Q5_K: return {0, 2};
        case DType::Q6_K: return {208, -1};
        default: return {0, -1};
    }
}

std::vector<uint8_t> random_matrix_bytes(DType type, int64_t rows, int64_t cols, uint64_t seed) {
    const auto& tr = block_type(type);
    const int64_t n_blocks = rows * cols / tr.block_elems;
    std::vector<uint8_t> bytes(size_t(n_blocks * tr.block_bytes));
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {  // xorshift64: fast enough for a GiB
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        std::memcpy(bytes.data() + i, &s, 8);
    }
    const auto [d_off, dmin_off] = scale_offsets(type);
    const uint16_t d = f32_to_f16(0.01f);
    for (int64_t b = 0; b < n_blocks; ++b) {
        std::memcpy(bytes.data() + b * tr.block_bytes + d_off, &d, 2);
        if (dmin_off >= 0) std::memcpy(bytes.data() + b * tr.block_bytes + dmin_off, &d, 2);
    }
    return bytes;
}

Matrix matrix_of(DType type, int64_t rows, int64_t cols, const std::vector<uint8_t>& bytes) {
    Matrix w;
    w.type = type;
    w.rows = rows;
    w.cols = cols;
    w.data = bytes.data();
    return w;
}

double read_seconds(const std::vector<const std::vector<uint8_t>*>& buffers, ThreadPool& pool, int reps) {
    std::vector<uint64_t> partial(size_t(pool.size()) * 8 + 8);
    return best_seconds([&] {
        for (const auto* buf : buffers) {
            const auto* words = reinterpret_cast<const uint64_t*>(buf->data());
            pool.parallel_for(int64_t(buf->size() / 8), [&](int64_t a, int64_t b, int tid) {
                uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int64_t i = a;
                for (; i + 4 <= b; i += 4) { s0 += words[i]; s1 += words[i + 1]; s2 += words[i + 2]; s3 += words[i + 3]; }
                for (; i < b; ++i) s0 += words[i];
                partial[size_t(tid) * 8] += s0 + s1 + s2 + s3;
            }, 4096);
        }
    }, reps);
}

std::vector<std::string_view> split(std::string_view s) {
    std::vector<std::string_view> out;
    while (!s.empty()) {
        const size_t comma = s.find(',');
        out.push_back(s.substr(0, comma));
        if (comma == std::string_view::npos) break;
        s.remove_prefix(comma + 1);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<int> thread_counts{1, 2};
    std::vector<DType> types{DType::Q8_0, DType::Q4_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
    bool dram = true, all_paths = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--threads" && i + 1 < argc) {
            thread_counts.clear();
            for (auto t : split(argv[++i])) thread_counts.push_back(std::stoi(std::string(t)));
        } else if (arg == "--types" && i + 1 < argc) {
            types.clear();
            for (auto t : split(argv[++i])) {
                bool found = false;
                for (int id = 0; id < 64 && !found; ++id)
                    if (find_block_type(uint32_t(id)) && find_block_type(uint32_t(id))->name == t) types.push_back(DType(id)), found = true;
                if (!found) return std::fprintf(stderr, "unknown type %.*s\n", int(t.size()), t.data()), 2;
            }
        } else if (arg == "--no-dram") {
            dram = false;
        } else if (arg == "--paths") {
            all_paths = true;
        } else {
            std::fprintf(stderr, "usage: bench_quant [--threads 1,2] [--types Q8_0,Q2_K,...] [--no-dram] [--paths]\n");
            return 2;
        }
    }
    const int64_t rows = 2048, cols = 7168;  // a V3 routed expert's gate/up ([moe_inter, hidden])
    std::printf("expert matrix %lldx%lld; GB/s of weight bytes, best of N (shared machine: noisy)\n",
                (long long)rows, (long long)cols);
    std::printf("%-6s %-5s %-16s %3s %4s %10s %10s %10s %10s %9s %10s\n", "type", "set", "path", "thr", "tok",
                "fused GB/s", "cpu GB/s", "exact GB/s", "read GB/s", "fused/rd", "us/token");
    std::vector<float> x(size_t(cols) * 64), y(size_t(rows) * 64);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 2654435761u % 2001) - 1000) / 1000.0f;
    for (int threads : thread_counts) {
        ThreadPool pool(threads);
        for (DType type : types) {
            if (!cpu::quant_dot_supports(type)) continue;
            const std::string name(dtype_name(type));
            const auto hot = random_matrix_bytes(type, rows, cols, 1);
            const Matrix w = matrix_of(type, rows, cols, hot);
            const double gb = double(hot.size()) / 1e9;
            const double read = read_seconds({&hot}, pool, 20);
            std::vector<cpu::QuantDotPath> paths{cpu::best_quant_dot_path()};
            if (all_paths) paths = {cpu::QuantDotPath::amx, cpu::QuantDotPath::avx512_vnni, cpu::QuantDotPath::avx2, cpu::QuantDotPath::scalar};
            for (auto path : paths) {
                if (!cpu::quant_dot_path_available(path)) continue;
                const char* path_name = cpu::quant_dot_path_name(path);
                for (int64_t n_tok : {1, 4, 16, 32, 64}) {
                    if (path == cpu::QuantDotPath::scalar && n_tok > 4) continue;
                    const int reps = n_tok == 1 ? 20 : n_tok <= 16 ? 5 : 3;
                    const double fused = best_seconds([&] {
                        cpu::quant_gemm_on_path(path, w, x.data(), cols, n_tok, y.data(), rows, pool);
                    }, path == cpu::QuantDotPath::scalar ? 2 : reps, threads);
                    const double fused_cpu = g_last_cpu_seconds;
                    double exact = 0;
                    if (n_tok == 1 && path == paths.front()) {
                        cpu::set_quant_dot(cpu::QuantDot::exact);
                        exact = best_seconds([&] { cpu::gemv(w, x.data(), y.data(), pool); }, 5);
                        cpu::set_quant_dot(cpu::QuantDot::fused);
                    }
                    char exact_col[32] = "";
                    if (exact > 0) std::snprintf(exact_col, sizeof exact_col, "%10.2f", gb / exact);
                    std::printf("%-6s %-5s %-16s %3d %4lld %10.2f %10.2f %10s %10.2f %9.2f %10.1f\n", name.c_str(), "hot",
                                path_name, threads, (long long)n_tok, gb / fused, gb / fused_cpu, exact_col, gb / read, read / fused,
                                fused / double(n_tok) * 1e6);
                }
            }
            if (dram) {  // a ring of copies well past the last-level cache
                const int64_t copies = std::max<int64_t>(2, int64_t(1.0e9 / double(hot.size())));
                std::vector<std::vector<uint8_t>> ring;
                std::vector<const std::vector<uint8_t>*> ring_ptrs;
                ring.reserve(size_t(copies));
                for (int64_t c = 0; c < copies; ++c) ring.push_back(random_matrix_bytes(type, rows, cols, uint64_t(c + 2)));
                for (const auto& r : ring) ring_ptrs.push_back(&r);
                const double ring_gb = gb * double(copies);
                const double ring_read = read_seconds(ring_ptrs, pool, 3);
                // GEMM rows too: a streamed expert arrives cold (DMA'd from disk), so the GEMM rate a
                // streaming step sees is this one, not the hot one (the weights sit in the LLC there).
                for (int64_t n_tok : {1, 32}) {
                    const double ring_fused = best_seconds([&] {
                        for (const auto& r : ring)
                            cpu::quant_gemm(matrix_of(type, rows, cols, r), x.data(), cols, n_tok, y.data(), rows, pool);
                    }, 3, threads);
                    const double ring_cpu = g_last_cpu_seconds;
                    std::printf("%-6s %-5s %-16s %3d %4lld %10.2f %10.2f %10s %10.2f %9.2f %10.1f\n", name.c_str(), "dram",
                                "best", threads, (long long)n_tok, ring_gb / ring_fused, ring_gb / ring_cpu, "",
                                ring_gb / ring_read, ring_read / ring_fused,
                                ring_fused / double(copies) / double(n_tok) * 1e6);
                }
            }
        }
    }
}
