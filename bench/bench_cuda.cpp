// CUDA kernel throughput beside the peers that bound it, same run:
//   - device memory bandwidth: a plain 16-byte-load read kernel and cudaMemcpy D2D;
//   - decode GEMV GB/s per weight type on DeepSeek-V3 shapes, as % of the read kernel (the types
//     with a fused int8 path twice: "f32" decodes weights to floats, "q8" quantises activations);
//   - pinned host->device copies in streamer-sized chunks vs one large cudaMemcpyAsync (and pageable);
//   - prefill GEMM (dequantise + cuBLAS BF16) vs cuBLAS BF16 alone on the same shape.
// Prints tables; never asserts. Usage: bench_cuda [--quick] [--json PATH]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/block_type.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cuda/bench_read_kernel.hpp"
#include "kernels/cuda/device.hpp"
#include "kernels/cuda/device_memory.hpp"
#include "kernels/cuda/gemm.hpp"
#include "kernels/cuda/gemv.hpp"
#include "kernels/cuda/streams.hpp"

using namespace sluice;

namespace {

// Rotating over copies larger than L2 (50 MB on H100/H200) keeps every GEMV reading HBM.
constexpr int64_t kWorkingSetBytes = int64_t(1) << 30;

struct Options {
    bool quick = false;
    std::string json_path;
};

std::string json;  // accumulated summary entries
void json_add(const std::string& entry) { json += (json.empty() ? "" : ",\n  ") + entry; }

// Times `fn` (which enqueues work on `stream`) until at least min_ms has passed; ms per call.
template <typename Fn>
double time_ms(cudaStream_t stream, double min_ms, Fn&& fn) {
    cuda::Event start(true), stop(true);
    fn();  // warm-up (and first-use allocations)
    SLUICE_CUDA_CHECK(cudaStreamSynchronize(stream));
    int iters = 1;
    for (;;) {
        start.record(stream);
        for (int i = 0; i < iters; ++i) fn();
        stop.record(stream);
        stop.synchronize();
        const double ms = cuda::Event::elapsed_ms(start, stop);
        if (ms >= min_ms || iters >= (1 << 20)) return ms / iters;
        iters *= ms > 0 ? std::max(2, int(min_ms / ms * 1.2)) : 8;
    }
}

void fill_random_bytes(void* dev, size_t bytes, DType type) {
    // Random bytes would make f16/bf16/fp8 NaNs and infs (slow paths on some GPUs) and garbage
    // block scales: fill host-side with a pattern of finite values of the type.
    std::vector<uint8_t> host(std::min<size_t>(bytes, size_t(64) << 20));
    std::mt19937 rng(1);
    for (auto& b : host) b = uint8_t(rng() & 0x3b);  // sign clear, exponent bits bounded
    for (size_t off = 0; off < bytes; off += host.size())
        SLUICE_CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(dev) + off, host.data(), std::min(host.size(), bytes - off),
                                     cudaMemcpyHostToDevice));
    (void)type;
}

double bench_bandwidth(const Options& o, cudaStream_t stream) {
    const size_t bytes = size_t(2) << 30;
    cuda::DeviceBuffer a(bytes), b(bytes);
    SLUICE_CUDA_CHECK(cudaMemset(a.data(), 1, bytes));
    cuda::DeviceBuffer sink(4096);
    const double min_ms = o.quick ? 50 : 300;
    const double read_ms = time_ms(stream, min_ms, [&] { cuda::bench::read_sum(a.data(), bytes, sink.as<float>(), stream); });
    const double copy_ms = time_ms(stream, min_ms, [&] {
        SLUICE_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream));
    });
    const double read_gbs = bytes / read_ms / 1e6, copy_gbs = 2.0 * bytes / copy_ms / 1e6;
    std::printf("\n== device memory bandwidth (2 GiB buffers)\n%-28s %10.1f GB/s\n%-28s %10.1f GB/s (read + write)\n",
                "read kernel (16 B loads)", read_gbs, "cudaMemcpy D2D", copy_gbs);
    json_add("{\"bench\": \"bandwidth\", \"read_gb_s\": " + std::to_string(read_gbs) + ", \"d2d_gb_s\": " +
             std::to_string(copy_gbs) + "}");
    return read_gbs;
}

struct Shape {
    const char* what;
    int64_t rows, cols;
};

void bench_gemv(const Options& o, cudaStream_t stream, double read_gbs) {
    const Shape shapes[] = {{"expert gate/up 2048x7168", 2048, 7168}, {"expert down 7168x2048", 7168, 2048},
                            {"q_b 24576x1536", 24576, 1536}};
    const DType types[] = {DType::F32,  DType::F16,  DType::BF16,   DType::FP8_E4M3_B128, DType::Q8_0, DType::Q4_0,
                           DType::Q4_1, DType::Q5_0, DType::Q5_1,   DType::Q2_K,          DType::Q3_K, DType::Q4_K,
                           DType::Q5_K, DType::Q6_K, DType::IQ4_NL, DType::IQ4_XS};
    std::printf("\n== decode GEMV (batch 1), working set %lld MiB rotated\n%-14s %-26s %10s %10s %8s\n",
                (long long)(kWorkingSetBytes >> 20), "type", "shape", "us", "GB/s", "% read");
    cuda::DeviceBuffer x(7168 * 4 * 8), y(24576 * 4 * 8);
    SLUICE_CUDA_CHECK(cudaMemset(x.data(), 0, x.size_bytes()));
    const cpu::QuantDot mode_before = cpu::quant_dot();
    for (const auto& s : shapes)
        for (DType t : types)
            for (const cpu::QuantDot mode : {cpu::QuantDot::exact, cpu::QuantDot::fused}) {
                if (mode == cpu::QuantDot::fused && !cuda::has_q8_gemv_kernel(t)) continue;
                cpu::set_quant_dot(mode);
                const std::string label = std::string(dtype_name(t)) +
                                          (cuda::has_q8_gemv_kernel(t) ? (mode == cpu::QuantDot::fused ? " q8" : " f32") : "");
                const Matrix probe{t, s.rows, s.cols, nullptr, nullptr, 0};
                const int64_t mbytes = probe.bytes();
                const int copies = int(std::max<int64_t>(1, kWorkingSetBytes / mbytes));
                cuda::DeviceBuffer w(size_t(mbytes) * copies);
                fill_random_bytes(w.data(), w.size_bytes(), t);
                const int64_t scale_floats = ((s.rows + 127) / 128) * ((s.cols + 127) / 128);
                std::vector<float> ones(size_t(scale_floats), 1.0f);
                cuda::DeviceBuffer scales(ones.size() * 4);
                SLUICE_CUDA_CHECK(cudaMemcpy(scales.data(), ones.data(), ones.size() * 4, cudaMemcpyHostToDevice));
                int next = 0;
                const double ms = time_ms(stream, o.quick ? 20 : 200, [&] {
                    const Matrix m{t, s.rows, s.cols, w.as<uint8_t>() + int64_t(next) * mbytes, scales.as<float>(), 0};
                    next = (next + 1) % copies;
                    cuda::gemv(m, x.as<float>(), y.as<float>(), stream);
                });
                const double gbs = mbytes / ms / 1e6;
                std::printf("%-14s %-26s %10.1f %10.1f %7.0f%%\n", label.c_str(), s.what, ms * 1e3, gbs, 100.0 * gbs / read_gbs);
                json_add("{\"bench\": \"gemv\", \"type\": \"" + label + "\", \"rows\": " + std::to_string(s.rows) +
                         ", \"cols\": " + std::to_string(s.cols) + ", \"gb_s\": " + std::to_string(gbs) +
                         ", \"fraction_of_read\": " + std::to_string(gbs / read_gbs) + "}");
            }
    cpu::set_quant_dot(mode_before);
}

void bench_h2d(const Options& o, cuda::StreamPair& streams) {
    const size_t total = size_t(512) << 20;
    cuda::PinnedBuffer pinned(total);
    std::memset(pinned.data(), 1, total);
    std::vector<uint8_t> pageable(total, 1);
    cuda::DeviceBuffer dev(total);
    const double min_ms = o.quick ? 50 : 300;
    auto run = [&](const void* src, size_t chunk) {
        return time_ms(streams.copy, min_ms, [&] {
            for (size_t off = 0; off < total; off += chunk)
                SLUICE_CUDA_CHECK(cudaMemcpyAsync(dev.as<uint8_t>() + off, static_cast<const uint8_t*>(src) + off,
                                                  std::min(chunk, total - off), cudaMemcpyHostToDevice, streams.copy));
        });
    };
    const double best = total / run(pinned.data(), total) / 1e6;
    std::printf("\n== host -> device copies of 512 MiB\n%-36s %10s %8s\n%-36s %10.1f %7.0f%%\n", "source, chunk", "GB/s",
                "% best", "pinned, one cudaMemcpyAsync (best)", best, 100.0);
    json_add("{\"bench\": \"h2d\", \"source\": \"pinned\", \"chunk_bytes\": " + std::to_string(total) +
             ", \"gb_s\": " + std::to_string(best) + "}");
    for (size_t chunk : {size_t(1) << 20, size_t(4) << 20, size_t(24) << 20, size_t(64) << 20}) {
        const double gbs = total / run(pinned.data(), chunk) / 1e6;
        std::printf("pinned, %4zu MiB chunks %-13s %10.1f %7.0f%%\n", chunk >> 20, "", gbs, 100.0 * gbs / best);
        json_add("{\"bench\": \"h2d\", \"source\": \"pinned\", \"chunk_bytes\": " + std::to_string(chunk) +
                 ", \"gb_s\": " + std::to_string(gbs) + "}");
    }
    const double pageable_gbs = total / run(pageable.data(), total) / 1e6;
    std::printf("%-36s %10.1f %7.0f%%\n", "pageable, one cudaMemcpyAsync", pageable_gbs, 100.0 * pageable_gbs / best);
    json_add("{\"bench\": \"h2d\", \"source\": \"pageable\", \"chunk_bytes\": " + std::to_string(total) +
             ", \"gb_s\": " + std::to_string(pageable_gbs) + "}");
}

void bench_gemm(const Options& o, cudaStream_t stream) {
    const Shape shapes[] = {{"expert gate/up 2048x7168", 2048, 7168}, {"expert down 7168x2048", 7168, 2048}};
    const int64_t n_tokens = 512;
    std::printf("\n== prefill GEMM, %lld tokens\n%-14s %-26s %10s %10s %12s\n", (long long)n_tokens, "type", "shape",
                "ms", "TFLOP/s", "% cuBLAS BF16");
    cublasHandle_t handle;
    SLUICE_CUBLAS_CHECK(cublasCreate(&handle));
    SLUICE_CUBLAS_CHECK(cublasSetStream(handle, stream));
    cuda::Gemm gemm;
    gemm.reserve(int64_t(2048) * 7168, n_tokens * 7168);
    for (const auto& s : shapes) {
        cuda::DeviceBuffer x(size_t(n_tokens * s.cols) * 4), y(size_t(n_tokens * s.rows) * 4);
        cuda::DeviceBuffer wb(size_t(s.rows * s.cols) * 2), xb(size_t(n_tokens * s.cols) * 2);
        SLUICE_CUDA_CHECK(cudaMemset(x.data(), 0, x.size_bytes()));
        fill_random_bytes(wb.data(), wb.size_bytes(), DType::BF16);
        SLUICE_CUDA_CHECK(cudaMemset(xb.data(), 0, xb.size_bytes()));
        const double flops = 2.0 * double(s.rows) * double(s.cols) * double(n_tokens);
        const float alpha = 1.0f, beta = 0.0f;
        const double peer_ms = time_ms(stream, o.quick ? 20 : 200, [&] {
            SLUICE_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(s.rows), int(n_tokens), int(s.cols), &alpha,
                                             wb.data(), CUDA_R_16BF, int(s.cols), xb.data(), CUDA_R_16BF, int(s.cols), &beta,
                                             y.data(), CUDA_R_32F, int(s.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        });
        std::printf("%-14s %-26s %10.3f %10.1f %11.0f%%\n", "cuBLAS bf16", s.what, peer_ms, flops / peer_ms / 1e9, 100.0);
        for (DType t : {DType::BF16, DType::FP8_E4M3_B128, DType::Q8_0, DType::Q4_K}) {
            const Matrix probe{t, s.rows, s.cols, nullptr, nullptr, 0};
            cuda::DeviceBuffer w(size_t(probe.bytes()));
            fill_random_bytes(w.data(), w.size_bytes(), t);
            const int64_t scale_floats = ((s.rows + 127) / 128) * ((s.cols + 127) / 128);
            std::vector<float> ones(size_t(scale_floats), 1.0f);
            cuda::DeviceBuffer scales(ones.size() * 4);
            SLUICE_CUDA_CHECK(cudaMemcpy(scales.data(), ones.data(), ones.size() * 4, cudaMemcpyHostToDevice));
            const Matrix m{t, s.rows, s.cols, w.data(), scales.as<float>(), 0};
            const double ms = time_ms(stream, o.quick ? 20 : 200,
                                      [&] { gemm.run(m, x.as<float>(), s.cols, n_tokens, y.as<float>(), s.rows, stream); });
            std::printf("%-14s %-26s %10.3f %10.1f %11.0f%%\n", std::string(dtype_name(t)).c_str(), s.what, ms,
                        flops / ms / 1e9, 100.0 * peer_ms / ms);
            json_add("{\"bench\": \"gemm\", \"type\": \"" + std::string(dtype_name(t)) + "\", \"rows\": " +
                     std::to_string(s.rows) + ", \"cols\": " + std::to_string(s.cols) + ", \"tokens\": " +
                     std::to_string(n_tokens) + ", \"tflop_s\": " + std::to_string(flops / ms / 1e9) +
                     ", \"cublas_bf16_tflop_s\": " + std::to_string(flops / peer_ms / 1e9) + "}");
        }
    }
    cublasDestroy(handle);
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0) o.quick = true;
        else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) o.json_path = argv[++i];
        else {
            std::fprintf(stderr, "usage: bench_cuda [--quick] [--json PATH]\n");
            return 2;
        }
    }
    const auto q = cuda::query_devices();
    if (q.devices.empty()) {
        std::printf("skipped: no CUDA device (%s)\n", q.reason.c_str());
        return 0;
    }
    const auto& d = q.devices.front();
    std::printf("device 0: %s, sm_%d%d, %zu MiB, %d SMs\n", d.name.c_str(), d.sm_major, d.sm_minor, d.total_bytes >> 20,
                d.n_multiprocessors);
    try {
        cuda::StreamPair streams;
        const double read_gbs = bench_bandwidth(o, streams.compute);
        bench_gemv(o, streams.compute, read_gbs);
        bench_h2d(o, streams);
        bench_gemm(o, streams.compute);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_cuda: %s\n", e.what());
        return 1;
    }
    if (!o.json_path.empty()) {
        FILE* f = std::fopen(o.json_path.c_str(), "w");
        if (!f) return 1;
        std::fprintf(f, "{\"device\": \"%s\", \"results\": [\n  %s\n]}\n", d.name.c_str(), json.c_str());
        std::fclose(f);
    }
    return 0;
}
