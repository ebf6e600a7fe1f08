// Fused quantised GEMV/GEMM against our (gguf-py-exact) dequantiser followed by a double dot of
// the unquantised activations. The fused path quantises activations to int8 (per 32 for Q8_0 /
// Q4_0, per 256 for K-quants), so the bound
// is relative to sum |w||x|: 1e-2 of it, far above int8 rounding (~0.4%/sqrt(n) typical) yet far
// below any indexing or scale error (which is O(1) of it).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <new>
#include <thread>
#include <limits>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/half.hpp"
#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/quant_dot.hpp"
#include "kernels/quant_blocks.hpp"
#include "kernels/cpu/quant_dot_kernels.hpp"
#include "kernels/cpu/matmul.hpp"

// Every allocation of this test binary is counted, so a test can tell that a kernel call allocated
// nothing after its scratch was reserved (sluice's steps must not allocate).
namespace {
std::atomic<long> g_allocations{0};
void* counted_alloc(std::size_t n, std::size_t align) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    void* p = nullptr;
    if (posix_memalign(&p, std::max(align, sizeof(void*)), n ? n : 1) != 0) throw std::bad_alloc();
    return p;
}
}  // namespace
void* operator new(std::size_t n) { return counted_alloc(n, alignof(std::max_align_t)); }
void* operator new[](std::size_t n) { return counted_alloc(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc(n, std::size_t(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_alloc(n, std::size_t(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace sluice;

namespace {

// Where each type keeps its f16 scale d and (for the min-carrying types) dmin inside a block.
struct ScaleOffsets {
    int d, dmin;  // dmin < 0: none
};
ScaleOffsets scale_offsets(DType type) {
    switch (type) {
        case DType::Q2_K: return {80, 82};
        case DType::Q3_K: return {108, -1};
        case DType::Q4_K: case DType::Q5_K: return {0, 2};
        case DType::Q6_K: return {208, -1};
        default: return {0, -1};  // Q8_0, Q4_0
    }
}

// Random bytes with sane f16 scales (random bits there would give inf / NaN).
std::vector<uint8_t> random_blocks(DType type, int64_t rows, int64_t cols, std::mt19937& rng) {
    const auto& tr = block_type(type);
    const int64_t n_blocks = rows * cols / tr.block_elems;
    std::vector<uint8_t> bytes(size_t(n_blocks * tr.block_bytes));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    for (auto& v : bytes) v = uint8_t(byte(rng));
    const ScaleOffsets off = scale_offsets(type);
    for (int64_t b = 0; b < n_blocks; ++b) {
        const uint16_t d = f32_to_f16(rng() % 2 ? scale(rng) : -scale(rng));
        std::memcpy(bytes.data() + b * tr.block_bytes + off.d, &d, 2);
        if (off.dmin >= 0) {
            const uint16_t dmin = f32_to_f16(scale(rng));
            std::memcpy(bytes.data() + b * tr.block_bytes + off.dmin, &dmin, 2);
        }
    }
    return bytes;
}

constexpr DType kFusedTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q2_K, DType::Q3_K,
                                 DType::Q4_K, DType::Q5_K, DType::Q6_K};

void check_against_dequantised_reference() {
    ThreadPool pool(2);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const cpu::QuantDotPath paths[] = {cpu::QuantDotPath::scalar, cpu::QuantDotPath::avx2,
                                       cpu::QuantDotPath::avx512_vnni, cpu::QuantDotPath::amx};
    for (DType type : kFusedTypes) {
        const int64_t unit = block_type(type).block_elems;
        std::vector<std::pair<int64_t, int64_t>> shapes{{1, unit}, {37, 3 * unit}, {129, 17 * unit}};
        // Q8_0's sixteen rows take rows of whole four-block entries: 104 blocks are two column
        // chunks (96 + 8) of two full tiles and a partial one
        if (type == DType::Q8_0) shapes.push_back({35, 104 * unit});
        for (const auto& [rows, cols] : shapes) {
            const auto w_bytes = random_blocks(type, rows, cols, rng);
            Matrix w;
            w.type = type;
            w.rows = rows;
            w.cols = cols;
            w.data = w_bytes.data();
            std::vector<float> w_f32(size_t(rows * cols));
            block_type(type).dequantize_row(w_bytes.data(), w_f32.data(), rows * cols);
            for (int64_t n_tokens = 1; n_tokens <= 9; ++n_tokens) {
                const int64_t x_stride = cols + 3, y_stride = rows + 1;
                std::vector<float> x(size_t(x_stride * n_tokens));
                for (auto& v : x) v = normal(rng);
                for (auto path : paths) {
                    if (!cpu::quant_dot_path_available(path)) {
                        MESSAGE("path not available here: ", cpu::quant_dot_path_name(path));
                        continue;
                    }
                    CAPTURE(dtype_name(type));
                    CAPTURE(cpu::quant_dot_path_name(path));
                    CAPTURE(rows);
                    CAPTURE(n_tokens);
                    std::vector<float> y(size_t(y_stride * n_tokens), -12345.0f);
                    cpu::quant_gemm_on_path(path, w, x.data(), x_stride, n_tokens, y.data(),
                                            y_stride, pool);
                    for (int64_t t = 0; t < n_tokens; ++t) {
                        for (int64_t r = 0; r < rows; ++r) {
                            double ref = 0, mag = 0;
                            for (int64_t c = 0; c < cols; ++c) {
                                const double wv = w_f32[size_t(r * cols + c)];
                                const double xv = x[size_t(t * x_stride + c)];
                                ref += wv * xv;
                                mag += std::fabs(wv * xv);
                            }
                            const double err = std::fabs(double(y[size_t(t * y_stride + r)]) - ref);
                            REQUIRE(err <= 1e-2 * mag + 1e-6);
                        }
                        // the padding between token rows of y is left alone
                        CHECK(y[size_t(t * y_stride + rows)] == -12345.0f);
                    }
                }
            }
        }
    }
}

// The AVX-512 path runs with and (where the CPU has it) without GFNI's bit-field unpacking, and its
// K-quants four rows per call and (switched off) one row per call: `check` runs under each.
template <typename Check>
void for_each_avx512_variant(Check check) {
    for (bool four_rows : {true, false}) {
        cpu::set_quant_dot_four_rows(four_rows);
        CAPTURE(four_rows);
        for (bool gfni : {true, false}) {
            cpu::set_quant_dot_gfni(gfni);
            CAPTURE(cpu::quant_dot_uses_gfni());
            check();
        }
    }
    cpu::set_quant_dot_gfni(true);
    cpu::set_quant_dot_four_rows(true);
}

}  // namespace

TEST_CASE("fused quantised gemm matches dequantise-then-dot within the activation-quantisation bound") {
    for_each_avx512_variant(check_against_dequantised_reference);
}

TEST_CASE("fused gemm refuses types and shapes it has no kernel for") {
    ThreadPool pool(1);
    std::vector<uint8_t> bytes(110 * 2);
    float x[256] = {}, y[2] = {};
    Matrix w;
    w.type = DType::IQ4_XS;
    w.rows = 1;
    w.cols = 256;
    w.data = bytes.data();
    CHECK_FALSE(cpu::quant_dot_supports(DType::IQ4_XS));
    CHECK_THROWS_AS(cpu::quant_gemm(w, x, 256, 1, y, 1, pool), Error);
    w.type = DType::Q3_K;
    w.cols = 96;  // not a whole super-block
    CHECK(cpu::quant_dot_supports(DType::Q3_K));
    CHECK_THROWS_AS(cpu::quant_gemm(w, x, 256, 1, y, 1, pool), Error);
}

// The SIMD paths do the scalar reference's integer arithmetic exactly and differ only in the
// order of float additions, so they agree with it far more tightly than with the f32 reference:
// a lane, scale or offset slip that the 1e-2 bound above might forgive shows up here.
namespace {

void check_simd_against_scalar() {
    ThreadPool pool(2);
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (DType type : kFusedTypes) {
        // a full 8-token group and a partial one; Q8_0's 104 blocks are two column chunks (96 + 8)
        const int64_t rows = 23, cols = type == DType::Q8_0 ? 104 * 32 : 8 * 256, n_tokens = 11;
        const auto w_bytes = random_blocks(type, rows, cols, rng);
        Matrix w;
        w.type = type;
        w.rows = rows;
        w.cols = cols;
        w.data = w_bytes.data();
        std::vector<float> w_f32(size_t(rows * cols));
        block_type(type).dequantize_row(w_bytes.data(), w_f32.data(), rows * cols);
        std::vector<float> x(size_t(cols * n_tokens));
        for (auto& v : x) v = normal(rng);
        std::vector<float> ref(size_t(rows * n_tokens));
        cpu::quant_gemm_on_path(cpu::QuantDotPath::scalar, w, x.data(), cols, n_tokens, ref.data(), rows, pool);
        for (auto path : {cpu::QuantDotPath::avx2, cpu::QuantDotPath::avx512_vnni, cpu::QuantDotPath::amx}) {
            if (!cpu::quant_dot_path_available(path)) continue;
            CAPTURE(dtype_name(type));
            CAPTURE(cpu::quant_dot_path_name(path));
            std::vector<float> y(size_t(rows * n_tokens));
            cpu::quant_gemm_on_path(path, w, x.data(), cols, n_tokens, y.data(), rows, pool);
            for (int64_t t = 0; t < n_tokens; ++t) {
                for (int64_t r = 0; r < rows; ++r) {
                    double mag = 0;
                    for (int64_t c = 0; c < cols; ++c)
                        mag += std::fabs(double(w_f32[size_t(r * cols + c)]) * x[size_t(t * cols + c)]);
                    CHECK(std::fabs(double(y[size_t(t * rows + r)]) - ref[size_t(t * rows + r)]) <= 1e-5 * mag);
                }
            }
        }
    }
}

}  // namespace

TEST_CASE("every SIMD path equals the scalar reference to float rounding") {
    for_each_avx512_variant(check_simd_against_scalar);
}

// Every path quantises activations to the same bytes (same scale, same round-to-nearest-even), so
// the paths differ only in how they add up: that is what lets the test above hold them to 1e-5.
TEST_CASE("the activation quantisers give identical blocks on every path") {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    const int64_t n = 4 * 256, n8 = n + 3 * 32;  // and for Q8: a partial last group of 3 blocks
    std::vector<float> x(static_cast<size_t>(n8));
    for (auto& v : x) v = normal(rng);
    for (int i = 0; i < 32; ++i) x[size_t(i)] = 0.0f;            // an all-zero block: d = 0, qs = 0
    x[300] = 1e-3f * 127.0f, x[301] = -1e-3f * 127.0f * 0.5f;   // exact halves: ties to even
    using namespace cpu::quant_kernels;
    std::vector<cpu::ActivationGroupQ8> ref8(5), got8(5);
    std::vector<cpu::ActivationBlockQ8K> refk(static_cast<size_t>(n / 256)), gotk(static_cast<size_t>(n / 256));
    scalar_row_groups().quantize_q8(x.data(), ref8.data(), n8);
    scalar_row_groups().quantize_q8k(x.data(), refk.data(), n);
    CHECK(ref8[0].d[0] == 0.0f);
    CHECK(ref8[0].sum[0] == 0);
    CHECK(ref8[4].d[3] == 0.0f);  // unused slots of the partial group are cleared
    for (auto path : {cpu::QuantDotPath::avx2, cpu::QuantDotPath::avx512_vnni}) {
        if (!cpu::quant_dot_path_available(path)) continue;
        CAPTURE(cpu::quant_dot_path_name(path));
        const RowGroupTable& table = path == cpu::QuantDotPath::avx2 ? avx2_row_groups() : avx512_vnni_row_groups();
        std::memset(static_cast<void*>(got8.data()), 0x7f, got8.size() * sizeof got8[0]);  // stale bytes
        table.quantize_q8(x.data(), got8.data(), n8);
        table.quantize_q8k(x.data(), gotk.data(), n);
        for (size_t g = 0; g < ref8.size(); ++g) {
            CHECK(std::memcmp(got8[g].d, ref8[g].d, sizeof ref8[g].d) == 0);
            CHECK(std::memcmp(got8[g].sum, ref8[g].sum, sizeof ref8[g].sum) == 0);
            CHECK(std::memcmp(got8[g].qs, ref8[g].qs, sizeof ref8[g].qs) == 0);
        }
        for (size_t b = 0; b < refk.size(); ++b) {
            CHECK(gotk[b].d == refk[b].d);
            CHECK(std::memcmp(gotk[b].qs, refk[b].qs, 256) == 0);
            CHECK(std::memcmp(gotk[b].bsums, refk[b].bsums, sizeof refk[b].bsums) == 0);
            CHECK(std::memcmp(gotk[b].bsums32, refk[b].bsums32, sizeof refk[b].bsums32) == 0);
        }
    }
}

// The AMX path takes calls of up to 6 tokens through the AVX-512 four-row kernel (row sums) and
// more through tile multiplies: both must give a token the same bits, whatever the call around it
// (sluice batch: a request's tokens are the same alone or in any batch). Rows 37: a partial
// 16-row tile and a partial 4-row group; 70 tokens: five 16-token tiles (more than 4: rows packed
// once per block of row tiles) with a partial last one; 17: two tiles, packed as used. Q6_K: rows
// 1, 2 and 3 start with its packed value s (q - 32) + 4096 at 8192 (q 0, scale -128), 32 (q 0,
// scale 127) and 8033 (q 63, scale 127), which a carry or sign slip in the byte planes would get wrong.
void check_amx_batch_invariance(DType type) {
    CAPTURE(dtype_name(type));
    ThreadPool pool(2);
    std::mt19937 rng(23);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int64_t rows = 37, cols = 5 * 256, n_tokens = 70;
    auto w_bytes = random_blocks(type, rows, cols, rng);
    if (type == DType::Q6_K) {
        const int64_t row_bytes = cols / 256 * int64_t(sizeof(quant::BlockQ6_K));
        const auto set_block = [&](int64_t row, uint8_t q_bits, uint8_t scale) {
            auto* b = reinterpret_cast<quant::BlockQ6_K*>(w_bytes.data() + row * row_bytes);
            std::memset(b->ql, q_bits, sizeof b->ql), std::memset(b->qh, q_bits, sizeof b->qh), std::memset(b->scales, scale, sizeof b->scales);
        };
        set_block(1, 0x00, 0x80);  // v = 8192
        set_block(2, 0x00, 0x7f);  // v = 32
        set_block(3, 0xff, 0x7f);  // v = 8033
    }
    Matrix w;
    w.type = type;
    w.rows = rows;
    w.cols = cols;
    w.data = w_bytes.data();
    std::vector<float> w_f32(size_t(rows * cols));
    block_type(type).dequantize_row(w_bytes.data(), w_f32.data(), rows * cols);
    std::vector<float> x(size_t(cols * n_tokens));
    for (auto& v : x) v = normal(rng);
    x[size_t(3 * cols + 7)] = 40.0f;  // an outlier: one token's scale far from the others'
    std::vector<float> batch(size_t(rows * n_tokens));
    cpu::quant_gemm_on_path(cpu::QuantDotPath::amx, w, x.data(), cols, n_tokens, batch.data(), rows, pool);
    std::vector<float> ref(size_t(rows * n_tokens));
    cpu::quant_gemm_on_path(cpu::QuantDotPath::scalar, w, x.data(), cols, n_tokens, ref.data(), rows, pool);
    for (int64_t t = 0; t < n_tokens; ++t) {
        CAPTURE(t);
        std::vector<float> alone(static_cast<size_t>(rows));
        cpu::quant_gemm_on_path(cpu::QuantDotPath::amx, w, x.data() + t * cols, cols, 1, alone.data(), rows, pool);
        CHECK(std::memcmp(alone.data(), batch.data() + t * rows, size_t(rows) * sizeof(float)) == 0);
        for (int64_t r = 0; r < rows; ++r) {  // the scalar reference to float rounding, as in the test above
            double mag = 0;
            for (int64_t c = 0; c < cols; ++c) mag += std::fabs(double(w_f32[size_t(r * cols + c)]) * x[size_t(t * cols + c)]);
            CHECK(std::fabs(double(alone[size_t(r)]) - ref[size_t(t * rows + r)]) <= 1e-5 * mag);
        }
    }
    for (int64_t first = 0; first + 5 <= n_tokens; first += 5) {  // groups of 5: the four-row kernel
        CAPTURE(first);
        std::vector<float> few(size_t(rows * 5));
        cpu::quant_gemm_on_path(cpu::QuantDotPath::amx, w, x.data() + first * cols, cols, 5, few.data(), rows, pool);
        CHECK(std::memcmp(few.data(), batch.data() + first * rows, few.size() * sizeof(float)) == 0);
    }
    std::vector<float> seventeen(size_t(rows * 17));  // a tile and a one-token tile: the tile kernel alone
    cpu::quant_gemm_on_path(cpu::QuantDotPath::amx, w, x.data() + 9 * cols, cols, 17, seventeen.data(), rows, pool);
    CHECK(std::memcmp(seventeen.data(), batch.data() + 9 * rows, seventeen.size() * sizeof(float)) == 0);
}

TEST_CASE("the AMX path gives a token the same bits alone, among few, and in token tiles") {
    if (!cpu::quant_dot_path_available(cpu::QuantDotPath::amx)) {
        MESSAGE("no AMX here (or the kernel refused the tile state): nothing to compare");
        return;
    }
    check_amx_batch_invariance(DType::Q4_K);
    check_amx_batch_invariance(DType::Q6_K);
}

// Q6_K weights at q = 32 are zero: a row of them must give exactly 0, however large the
// activations. The sixteen-row kernel starts each sub-block's integer dot at -32 sum(a), so the
// integer is exact; taking 32 sum(a) off in float afterwards left ~1e-4 of cancellation here.
TEST_CASE("Q6_K rows of zero weights give exactly zero on the AVX-512 sixteen-, four- and one-row kernels") {
    // q = 32 is a weight of 0: the offset of 32 must cancel in integers, not in floats. (The AVX2
    // path's one-row kernel still subtracts it per lane in float: 121 of these 185 values nonzero;
    // summing the lanes in int32 first cost its Q6_K 18-21% in bench_quant, so it is left.)
    ThreadPool pool(2);
    for (const auto path : {cpu::QuantDotPath::avx512_vnni}) {
        const std::string path_name = cpu::quant_dot_path_name(path);
        CAPTURE(path_name);
        if (!cpu::quant_dot_path_available(path)) {
            MESSAGE("path not available here: nothing to check");
            continue;
        }
        std::mt19937 rng(3);
        const int64_t rows = 37, cols = 2 * 256, n_tokens = 5;  // two whole 16-row tiles, then 4 + 1 rows
        auto w_bytes = random_blocks(DType::Q6_K, rows, cols, rng);  // random scales and d
        for (int64_t b = 0; b < rows * cols / 256; ++b) {
            auto* block = reinterpret_cast<quant::BlockQ6_K*>(w_bytes.data() + b * int64_t(sizeof(quant::BlockQ6_K)));
            std::memset(block->ql, 0x00, sizeof block->ql);  // low 4 bits 0
            std::memset(block->qh, 0xaa, sizeof block->qh);  // high 2 bits 10: q = 32
        }
        Matrix w;
        w.type = DType::Q6_K;
        w.rows = rows;
        w.cols = cols;
        w.data = w_bytes.data();
        std::normal_distribution<float> normal(0.0f, 1000.0f);
        std::vector<float> x(size_t(cols * n_tokens)), y(size_t(rows * n_tokens), 1.0f);
        for (auto& v : x) v = normal(rng);
        cpu::quant_gemm_on_path(path, w, x.data(), cols, n_tokens, y.data(), rows, pool);
        int nonzero = 0;
        for (float v : y) nonzero += v != 0.0f;
        CHECK(nonzero == 0);
    }
}

// MLA's per-head products go through one grouped call (RowGroups): every token's numbers must be
// those of a call per group, with shared activations (x_offset 0) and a group's own, for types with
// and without the sixteen-row kernels, and groups that are not whole 16-row tiles (done group by group).
TEST_CASE("a grouped gemm gives the bits of one gemm per group") {
    ThreadPool pool(2);
    std::mt19937 rng(31);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    struct Case {
        DType type;
        int64_t group_rows, n_row_groups, cols;
    };
    // (8 groups of 512 columns: 19 x 8 x 512 activations, quantised on the pool's threads)
    for (const Case c : {Case{DType::Q4_K, 32, 5, 512}, Case{DType::Q8_0, 16, 6, 256}, Case{DType::Q8_0, 48, 3, 128},
                         Case{DType::Q8_0, 16, 8, 512}, Case{DType::Q3_K, 16, 4, 256}, Case{DType::Q6_K, 12, 4, 256}}) {
        for (bool shared_x : {true, false}) {
            CAPTURE(dtype_name(c.type));
            CAPTURE(c.group_rows);
            CAPTURE(shared_x);
            const int64_t rows = c.group_rows * c.n_row_groups, n_tokens = 19;
            const auto w_bytes = random_blocks(c.type, rows, c.cols, rng);
            Matrix w;
            w.type = c.type;
            w.rows = rows;
            w.cols = c.cols;
            w.data = w_bytes.data();
            const RowGroups groups{c.group_rows, shared_x ? 0 : c.cols + 32, c.group_rows + 3};
            const int64_t x_stride = shared_x ? c.cols + 5 : c.n_row_groups * (c.cols + 32) + 5;
            const int64_t y_stride = c.n_row_groups * groups.y_offset + 7;
            std::vector<float> x(size_t(x_stride * n_tokens));
            for (auto& v : x) v = normal(rng);
            std::vector<float> grouped(size_t(y_stride * n_tokens), -7.0f), each(grouped.size(), -7.0f);
            cpu::quant_gemm_grouped(w, groups, x.data(), x_stride, n_tokens, grouped.data(), y_stride, pool);
            for (int64_t g = 0; g < c.n_row_groups; ++g)
                cpu::quant_gemm(w.row_slice(g * c.group_rows, c.group_rows), x.data() + g * groups.x_offset, x_stride,
                                n_tokens, each.data() + g * groups.y_offset, y_stride, pool);
            CHECK(std::memcmp(grouped.data(), each.data(), grouped.size() * sizeof(float)) == 0);
            CHECK(grouped[size_t(c.group_rows)] == -7.0f);  // the gaps between groups' outputs are left alone
        }
    }
}

// A forward reserves its kernels' scratch before its first step (CpuBackend::reserve) so that no
// step allocates: a Q8_0 GEMM (sixteen-row tiles of 128-column entries) and MLA's grouped absorb
// and un-absorb on a small model's shape (each head's rows padded to 256-column activation groups)
// must allocate nothing after the reserves, on the caller or the pool's threads. Run on a fresh
// thread so its thread-local scratch starts empty.
TEST_CASE("quant_gemm and the grouped products allocate nothing once their scratch is reserved") {
    std::thread([] {
        ThreadPool pool(2);
        std::mt19937 rng(41);
        const int64_t n = 16, heads = 4, kv_rank = 64, nope = 32, qk_head = 48, v_dim = 32, cols = 2048;
        cpu::reserve_gemm_scratch(n, cols, pool);
        cpu::reserve_quant_gemm_grouped_scratch(n, heads, std::max(nope, kv_rank));
        const auto w_bytes = random_blocks(DType::Q8_0, 32, cols, rng);
        const auto kb = random_blocks(DType::Q8_0, heads * kv_rank, nope, rng);
        const auto vb = random_blocks(DType::Q8_0, heads * v_dim, kv_rank, rng);
        const Matrix w{DType::Q8_0, 32, cols, w_bytes.data(), nullptr, 0};
        const Matrix k_b{DType::Q8_0, heads * kv_rank, nope, kb.data(), nullptr, 0};
        const Matrix v_b{DType::Q8_0, heads * v_dim, kv_rank, vb.data(), nullptr, 0};
        std::vector<float> x(size_t(n * cols), 0.25f), y(size_t(n * 32)), q(size_t(n * heads * qk_head), 0.5f),
            latent(size_t(n * heads * kv_rank)), out(size_t(n * heads * v_dim));
        const long before = g_allocations.load();
        cpu::quant_gemm(w, x.data(), cols, n, y.data(), 32, pool);
        cpu::gemm_grouped(k_b, {kv_rank, qk_head, kv_rank}, q.data(), heads * qk_head, n, latent.data(), heads * kv_rank, pool);
        cpu::gemm_grouped(v_b, {v_dim, kv_rank, v_dim}, latent.data(), heads * kv_rank, n, out.data(), heads * v_dim, pool);
        CHECK(g_allocations.load() - before == 0);
    }).join();
}
