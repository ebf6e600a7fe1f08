// gemv / gemm dispatch: pick the instruction-set path, pick the kernel for the weight type from
// one table, split the rows over the pool. Each weight row is streamed once per call.
#include "kernels/cpu/matmul.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string_view>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "kernels/cpu/kernel_paths.hpp"
#include "kernels/cpu/quant_dot.hpp"

namespace sluice::cpu {
namespace detail {

const PathKernels& path_kernels(CpuPath path) {
    switch (path) {
        case CpuPath::avx512: return avx512_kernels();
        case CpuPath::avx2: return avx2_kernels();
        case CpuPath::scalar: break;
    }
    return scalar_kernels();
}

std::vector<CpuPath> supported_paths() {
    const CpuFeatures& f = detect_cpu_features();
    std::vector<CpuPath> paths{CpuPath::scalar};
    if (f.avx2 && f.fma && f.f16c) {
        paths.push_back(CpuPath::avx2);
        if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) paths.push_back(CpuPath::avx512);
    }
    return paths;
}

const char* path_name(CpuPath path) {
    switch (path) {
        case CpuPath::avx512: return "avx512";
        case CpuPath::avx2: return "avx2";
        case CpuPath::scalar: break;
    }
    return "scalar";
}

// The per-type table. A fused kernel for a quantised type plugs in as one more case here
// (e.g. `case DType::Q8_0: return kernels.gemm_q8_0;`); until then it goes through dequantise+dot.
RowsKernel matmul_kernel(DType type, const PathKernels& kernels) {
    switch (type) {
        case DType::F32: return kernels.gemm_f32;
        case DType::F16: return kernels.gemm_f16;
        case DType::BF16: return kernels.gemm_bf16;
        case DType::FP8_E4M3_B128: return kernels.gemm_fp8_b128;
        default: break;
    }
    return block_type(type).dequantize_row ? kernels.gemm_dequantized : nullptr;
}

namespace {

// One dequantised row per pool thread, grown to the widest matrix seen and then reused: the
// pool's threads live as long as the process, so this allocates only on the first wider call.
float* thread_row_scratch(int64_t cols) {
    thread_local AlignedBuffer scratch;
    const size_t bytes = size_t(cols) * sizeof(float);
    if (scratch.size() < bytes) scratch.allocate(bytes);
    return scratch.as<float>();
}

}  // namespace

void gemm_on_path(CpuPath path, const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens,
                  float* y, int64_t y_stride, ThreadPool& pool) {
    const RowsKernel kernel = matmul_kernel(w.type, path_kernels(path));
    if (!kernel) fail(ErrorKind::unsupported, "no CPU matmul kernel for weight type {}", dtype_name(w.type));
    if (!row_fits_blocks(w.type, w.cols))
        fail(ErrorKind::invalid_input, "matmul: {} columns are not whole {} blocks", w.cols, dtype_name(w.type));
    if (w.type == DType::FP8_E4M3_B128 && !w.block_scales)
        fail(ErrorKind::invalid_input, "matmul: FP8_E4M3_B128 matrix [{}, {}] has no block scales", w.rows, w.cols);
    if (w.rows <= 0 || n_tokens <= 0) return;
    const bool needs_scratch = kernel == path_kernels(path).gemm_dequantized;
    // 16-row grains keep the register tiles whole and give every thread a contiguous stream.
    pool.parallel_for(w.rows, [&](int64_t row_begin, int64_t row_end, int) {
        float* row_scratch = needs_scratch ? thread_row_scratch(w.cols) : nullptr;
        kernel(w, row_begin, row_end, x, x_stride, n_tokens, y, y_stride, row_scratch);
    }, 16);
}

}  // namespace detail

namespace {
std::atomic<QuantDot>& quant_dot_mode() {
    static std::atomic<QuantDot> mode{[] {
        const char* e = std::getenv("SLUICE_EXACT_DOT");
        return e && std::string_view(e) == "1" ? QuantDot::exact : QuantDot::fused;
    }()};
    return mode;
}
}  // namespace

void set_quant_dot(QuantDot mode) { quant_dot_mode().store(mode); }
QuantDot quant_dot() { return quant_dot_mode().load(); }

void gemv(const Matrix& w, const float* x, float* y, ThreadPool& pool) {
    gemm(w, x, w.cols, 1, y, w.rows, pool);
}

void gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
          ThreadPool& pool) {
    if (quant_dot() == QuantDot::fused && quant_dot_supports(w.type) && w.rows > 0 && n_tokens > 0)
        return quant_gemm(w, x, x_stride, n_tokens, y, y_stride, pool);
    detail::gemm_on_path(cpu_path(), w, x, x_stride, n_tokens, y, y_stride, pool);
}

void gemm_grouped(const Matrix& w, const RowGroups& groups, const float* x, int64_t x_stride, int64_t n_tokens,
                  float* y, int64_t y_stride, ThreadPool& pool) {
    if (groups.rows <= 0 || groups.rows == w.rows) return gemm(w, x, x_stride, n_tokens, y, y_stride, pool);
    if (w.rows % groups.rows != 0)
        fail(ErrorKind::invalid_input, "gemm_grouped: {} rows are not whole groups of {}", w.rows, groups.rows);
    if (quant_dot() == QuantDot::fused && quant_dot_supports(w.type) && n_tokens > 0)
        return quant_gemm_grouped(w, groups, x, x_stride, n_tokens, y, y_stride, pool);
    for (int64_t g = 0; g < w.rows / groups.rows; ++g)
        gemm(w.row_slice(g * groups.rows, groups.rows), x + g * groups.x_offset, x_stride, n_tokens,
             y + g * groups.y_offset, y_stride, pool);
}

bool has_matmul_kernel(DType type) {
    return detail::matmul_kernel(type, detail::path_kernels(cpu_path())) != nullptr;
}

void reserve_gemm_scratch(int64_t n_tokens, int64_t cols, ThreadPool& pool) {
    reserve_quant_gemm_scratch(n_tokens, cols);
    pool.run_on_all([&](int) {
        detail::thread_row_scratch(cols);
        reserve_quant_gemm_thread_scratch(cols);
    });
}

uint64_t gemm_scratch_bytes(int64_t n_tokens, int64_t cols, int n_threads) {
    return quant_gemm_scratch_bytes(n_tokens, cols) +
           uint64_t(std::max(n_threads, 1)) *
               (AlignedBuffer::held_bytes(size_t(cols) * sizeof(float)) + quant_gemm_thread_scratch_bytes(cols));
}

}  // namespace sluice::cpu
