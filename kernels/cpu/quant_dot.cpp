// Dispatch of the fused quantised dots: quantise the activations once per call (Q8_0-style per 32
// for Q8_0 / Q4_0 weights, Q8_K-style per 256 for K-quants), pick the path's kernel for the type,
// split the rows over the pool. The kernels live in quant_dot_{scalar,avx2,avx512}.cpp.
#include "kernels/cpu/quant_dot.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/error.hpp"
#include "kernels/cpu/cpu_features.hpp"
#include "kernels/cpu/quant_dot_amx.hpp"
#include "kernels/cpu/quant_dot_kernels.hpp"
#include "kernels/cpu/quantize_activations.hpp"

namespace sluice::cpu {
namespace {

using quant_kernels::kMaxTokenGroup;
using quant_kernels::PackedBlock16;
using quant_kernels::QuadRowGroupFn;
using quant_kernels::Repack16Fn;
using quant_kernels::Rows16Fn;
using quant_kernels::RowGroupFn;
using quant_kernels::RowGroupTable;

const RowGroupTable& row_groups(QuantDotPath path) {
    switch (path) {
        case QuantDotPath::amx:  // the types without an AMX kernel
        case QuantDotPath::avx512_vnni:
            return quant_dot_uses_gfni() ? quant_kernels::avx512_vnni_gfni_row_groups()
                                         : quant_kernels::avx512_vnni_row_groups();
        case QuantDotPath::avx2: return quant_kernels::avx2_row_groups();
        case QuantDotPath::scalar: break;
    }
    return quant_kernels::scalar_row_groups();
}

RowGroupFn row_group_for(DType type, const RowGroupTable& table) {
    switch (type) {
        case DType::Q8_0: return table.q8_0;
        case DType::Q4_0: return table.q4_0;
        case DType::Q2_K: return table.q2_k;
        case DType::Q3_K: return table.q3_k;
        case DType::Q4_K: return table.q4_k;
        case DType::Q5_K: return table.q5_k;
        case DType::Q6_K: return table.q6_k;
        default: break;
    }
    return nullptr;
}

// Four rows per call pays where the scales and epilogue are a large share of the work. Q3_K (hmask
// bits) and Q5_K (qh bits) unpack more per weight vector and are a little slower four rows at a
// time below 8 tokens (bench_gemv --gemm, 2048x7168 from DRAM, 2 threads, four rows / one row:
// Q3_K 1 token 0.86, 4 tokens 0.96, 8 tokens 1.22; Q5_K 0.96 / 0.92 / 1.34), but the choice must
// not depend on the token count: a token's result would then depend on the batch around it
// (sluice batch promises a request's tokens are the same alone or in any batch).
QuadRowGroupFn quad_row_group_for(DType type, const RowGroupTable& table) {
    switch (type) {
        case DType::Q2_K: return table.q2_k_quad;
        case DType::Q3_K: return table.q3_k_quad;
        case DType::Q4_K: return table.q4_k_quad;
        case DType::Q5_K: return table.q5_k_quad;
        case DType::Q6_K: return table.q6_k_quad;
        default: break;
    }
    return nullptr;
}

std::atomic<bool> g_gfni_allowed{true};
std::atomic<bool> g_four_rows_allowed{true};

bool is_k_quant(DType type) { return block_type(type).block_elems == 256; }

// Grow only: after the first call of a given size no further allocation happens.
thread_local std::vector<ActivationGroupQ8> t_activations_q8;
thread_local std::vector<ActivationBlockQ8K> t_activations_q8k;
thread_local std::vector<quant_kernels::PackedBlock16> t_packed_16;  // a thread's repacked 16-row tile

using quant_kernels::grown;

constexpr int64_t kActivationGroupElems = 256;  // one ActivationBlockQ8K, or one ActivationGroupQ8 of eight 32-blocks
size_t activation_groups(int64_t n_tokens, int64_t cols) {
    return size_t(n_tokens * ((cols + kActivationGroupElems - 1) / kActivationGroupElems));
}

}  // namespace

void reserve_quant_gemm_scratch(int64_t n_tokens, int64_t cols) {
    grown(t_activations_q8, activation_groups(n_tokens, cols));
    grown(t_activations_q8k, activation_groups(n_tokens, cols));
    if (best_quant_dot_path() == QuantDotPath::amx) amx::reserve_scratch(n_tokens, cols);
}

namespace {
// Both activation forms for n 256-column groups, as the caller's scratch holds them.
uint64_t activation_bytes(size_t n) {
    return AlignedBuffer::held_bytes(n * sizeof(ActivationGroupQ8)) + AlignedBuffer::held_bytes(n * sizeof(ActivationBlockQ8K));
}
}  // namespace

uint64_t quant_gemm_scratch_bytes(int64_t n_tokens, int64_t cols) {
    uint64_t bytes = activation_bytes(activation_groups(n_tokens, cols));
    if (best_quant_dot_path() == QuantDotPath::amx)
        bytes += AlignedBuffer::held_bytes(amx::scratch_bytes(n_tokens, cols));
    return bytes;
}

void reserve_quant_gemm_grouped_scratch(int64_t n_tokens, int64_t groups, int64_t cols) {
    grown(t_activations_q8, activation_groups(n_tokens * groups, cols));
    grown(t_activations_q8k, activation_groups(n_tokens * groups, cols));
}

uint64_t quant_gemm_grouped_scratch_bytes(int64_t n_tokens, int64_t groups, int64_t cols) {
    return activation_bytes(activation_groups(n_tokens * groups, cols));
}

namespace {
// A repacked 16-row tile of a row of `cols` columns: entries of 256 columns (K-quants) or 128 (Q8_0),
// the more of the two. The AMX path takes Q8_0 and Q5_K through the same kernels.
size_t packed_16_entries(int64_t cols) { return size_t((cols + 127) / 128); }
bool has_sixteen_rows(QuantDotPath path) { return path == QuantDotPath::avx512_vnni || path == QuantDotPath::amx; }
}  // namespace

void reserve_quant_gemm_thread_scratch(int64_t cols) {
    if (best_quant_dot_path() == QuantDotPath::amx) amx::reserve_thread_scratch(cols);
    if (has_sixteen_rows(best_quant_dot_path())) grown(t_packed_16, packed_16_entries(cols));
}

uint64_t quant_gemm_thread_scratch_bytes(int64_t cols) {
    const QuantDotPath path = best_quant_dot_path();
    const uint64_t amx = path == QuantDotPath::amx ? amx::thread_scratch_bytes(cols) : 0;
    const uint64_t packed =
        has_sixteen_rows(path) ? AlignedBuffer::held_bytes(packed_16_entries(cols) * sizeof(PackedBlock16)) : 0;
    return amx + packed;
}

bool quant_dot_supports(DType type) { return row_group_for(type, quant_kernels::scalar_row_groups()) != nullptr; }

bool quant_dot_path_available(QuantDotPath path) {
    const auto& f = detect_cpu_features();
    switch (path) {
        case QuantDotPath::scalar: return true;
        case QuantDotPath::avx2: return f.avx2 && f.fma && f.f16c;
        case QuantDotPath::avx512_vnni:
            return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni;
        case QuantDotPath::amx: return quant_dot_path_available(QuantDotPath::avx512_vnni) && amx::available();
    }
    return false;
}

void set_quant_dot_gfni(bool allowed) { g_gfni_allowed.store(allowed); }
void set_quant_dot_four_rows(bool allowed) { g_four_rows_allowed.store(allowed); }

bool quant_dot_uses_gfni() {
    // cpu_features has no GFNI bit; the compiler's own CPUID reading does
    static const bool has_gfni = __builtin_cpu_supports("gfni");
    return has_gfni && g_gfni_allowed.load(std::memory_order_relaxed);
}

const char* quant_dot_path_name(QuantDotPath path) {
    switch (path) {
        case QuantDotPath::scalar: return "scalar";
        case QuantDotPath::avx2: return "avx2";
        case QuantDotPath::avx512_vnni: return "avx512_vnni";
        case QuantDotPath::amx: return "amx";
    }
    return "?";
}

QuantDotPath best_quant_dot_path() {
    if (cpu_path() == CpuPath::scalar) return QuantDotPath::scalar;
    if (cpu_path() == CpuPath::avx512 && quant_dot_path_available(QuantDotPath::avx512_vnni)) {
        // SLUICE_AMX=0 keeps AMX machines on the VNNI kernels (A/B runs, or a kernel without the
        // tile state); read once: the choice must hold for the whole process (batch invariance).
        static const bool amx_allowed = [] {
            const char* e = std::getenv("SLUICE_AMX");
            return !(e && std::string_view(e) == "0");
        }();
        return amx_allowed && quant_dot_path_available(QuantDotPath::amx) ? QuantDotPath::amx : QuantDotPath::avx512_vnni;
    }
    return QuantDotPath::avx2;
}

namespace {

void quant_gemm_groups(QuantDotPath path, const Matrix& w, const RowGroups& groups, const float* x, int64_t x_stride,
                       int64_t n_tokens, float* y, int64_t y_stride, ThreadPool& pool) {
    if (!quant_dot_supports(w.type))
        fail(ErrorKind::unsupported, "quant_gemm: no fused kernel for {}", dtype_name(w.type));
    if (!row_fits_blocks(w.type, w.cols))
        fail(ErrorKind::invalid_input, "quant_gemm: {} columns are not whole {} blocks", w.cols,
             dtype_name(w.type));
    if (!quant_dot_path_available(path))
        fail(ErrorKind::unsupported, "quant_gemm: requested kernel path not available on this CPU");
    if (w.rows <= 0 || n_tokens <= 0) return;
    const int64_t group_rows = groups.rows > 0 ? groups.rows : w.rows;
    if (w.rows % group_rows != 0)
        fail(ErrorKind::invalid_input, "quant_gemm: {} rows are not whole groups of {}", w.rows, group_rows);
    const int64_t n_row_groups = w.rows / group_rows;
    constexpr int64_t kRowTile = 16;
    const auto group_by_group = [&](QuantDotPath on) {
        for (int64_t g = 0; g < n_row_groups; ++g)
            quant_gemm_groups(on, w.row_slice(g * group_rows, group_rows), {}, x + g * groups.x_offset, x_stride,
                              n_tokens, y + g * groups.y_offset, y_stride, pool);
    };
    if (path == QuantDotPath::amx) {
        if (amx::supports(w.type)) {
            if (n_row_groups == 1) return amx::gemm(w, x, x_stride, n_tokens, y, y_stride, pool);
            return group_by_group(path);
        }
        path = QuantDotPath::avx512_vnni;
    }
    // Groups go through one call where no tile of rows straddles two of them.
    if (n_row_groups > 1 && group_rows % kRowTile != 0) return group_by_group(path);
    const RowGroupTable& table = row_groups(path);
    const RowGroupFn fn = row_group_for(w.type, table);
    const int64_t n_blocks = w.cols / block_type(w.type).block_elems;
    // Activations: 320 bytes per 256 columns (one ActivationBlockQ8K, or one ActivationGroupQ8 of
    // eight 32-blocks); token t starts at acts + t * act_token_bytes.
    constexpr int64_t kGroupElems = kActivationGroupElems, kGroupBytes = 320;
    static_assert(sizeof(ActivationBlockQ8K) == kGroupBytes && sizeof(ActivationGroupQ8) == kGroupBytes);
    const int64_t n_groups = (w.cols + kGroupElems - 1) / kGroupElems;
    // Row groups with their own activations have them side by side in a token's row of scratch.
    const int64_t x_groups = n_row_groups > 1 && groups.x_offset != 0 ? n_row_groups : 1;
    const int64_t act_group_bytes = n_groups * kGroupBytes;
    const int64_t act_token_bytes = x_groups * act_group_bytes;
    // Quantised by the pool's threads when there are many: MLA's per-head W_UV products quantise
    // hundreds of tokens for 128 rows a call, where one thread doing it left the other idle for a
    // fifth of the call. A token's bytes are the same whichever thread makes them.
    const auto quantize_tokens = [&](auto* scratch, auto quantize) {
        const auto run = [&](int64_t t0, int64_t t1, int) {
            for (int64_t t = t0; t < t1; ++t)
                for (int64_t g = 0; g < x_groups; ++g)
                    quantize(x + t * x_stride + g * groups.x_offset, scratch + (t * x_groups + g) * n_groups, w.cols);
        };
        constexpr int64_t kParallelElems = 64 * 1024;
        if (n_tokens * x_groups * w.cols >= kParallelElems) pool.parallel_for(n_tokens, run);
        else run(0, n_tokens, 0);
        return reinterpret_cast<const uint8_t*>(scratch);
    };
    const uint8_t* acts =
        is_k_quant(w.type)
            ? quantize_tokens(grown(t_activations_q8k, size_t(x_groups * n_groups * n_tokens)), table.quantize_q8k)
            : quantize_tokens(grown(t_activations_q8, size_t(x_groups * n_groups * n_tokens)), table.quantize_q8);
    const int64_t row_bytes = w.bytes_per_row();
    const auto* base = static_cast<const uint8_t*>(w.data);
    // Many tokens: a tile of rows (kept in L1/L2) meets one token group's activations at a time,
    // over column chunks small enough that the group's activations for a chunk stay in L1, instead
    // of every row streaming all tokens' activations from L2 again. The chunk is sized for a full
    // token group whatever n_tokens is: partial sums are added per chunk, so a chunk that grew for
    // small calls would change a token's rounding with the batch around it (batch invariance).
    const bool multi_rows = g_four_rows_allowed.load(std::memory_order_relaxed);
    const QuadRowGroupFn quad = multi_rows ? quad_row_group_for(w.type, table) : nullptr;
    // Sixteen rows from a repacked tile where the path has it for the type (whole 16-row tiles of
    // rows that are whole packed entries; the rows of a partial tile go four and one at a time):
    // see quant_dot_avx512.cpp.
    const quant_kernels::SixteenRows sixteen_rows = [&] {
        const quant_kernels::SixteenRows none{};
        if (!multi_rows) return none;
        const quant_kernels::SixteenRows& s = w.type == DType::Q4_K ? table.q4_k_16
                                              : w.type == DType::Q5_K ? table.q5_k_16
                                              : w.type == DType::Q6_K ? table.q6_k_16
                                              : w.type == DType::Q8_0 ? table.q8_0_16
                                                                      : none;
        return n_blocks % s.blocks_per_entry == 0 ? s : none;
    }();
    const Repack16Fn repack_16 = sixteen_rows.repack;
    const Rows16Fn rows_16 = sixteen_rows.rows;
    const int64_t entry_blocks = sixteen_rows.blocks_per_entry;
    const int64_t token_group =
        quad && !rows_16 && table.quad_token_group ? table.quad_token_group : table.token_group;
    constexpr int64_t kL1ActivationBytes = 32 * 1024;
    const int64_t blocks_per_group = kGroupElems / block_type(w.type).block_elems;  // 8 or 1
    const int64_t w_block_bytes = block_type(w.type).block_bytes;
    const int64_t chunk_groups =
        std::clamp<int64_t>(kL1ActivationBytes / (token_group * kGroupBytes), 1, n_groups);
    const int64_t chunk_blocks = chunk_groups * blocks_per_group;
    pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) {
        const void* a[kMaxTokenGroup];
        float sums[kRowTile * kMaxTokenGroup];
        float partial[kMaxTokenGroup][kRowTile];  // [token][row]: a token's rows are contiguous in y
        PackedBlock16* packed = rows_16 ? grown(t_packed_16, size_t(n_blocks / entry_blocks)) : nullptr;
        for (int64_t tile = r0; tile < r1; tile += kRowTile) {
            const int64_t tile_rows = std::min(kRowTile, r1 - tile);
            const int64_t group = tile / group_rows;  // whole tiles of one group (or all rows one group)
            const uint8_t* group_acts = acts + (x_groups > 1 ? group : 0) * act_group_bytes;
            float* group_y = y + group * groups.y_offset + (tile - group * group_rows);
            const bool sixteen = rows_16 && tile_rows == kRowTile;
            if (sixteen) repack_16(base + tile * row_bytes, row_bytes, n_blocks / entry_blocks, packed);  // shared by all tokens
            // The next tile of this thread's rows, into L2 while this one computes; each call of
            // rows_16 below takes an equal share of its lines.
            const uint8_t* next_first = nullptr;
            int64_t next_lines = 0;
            if (sixteen && tile + 2 * kRowTile <= r1) {
                next_first = reinterpret_cast<const uint8_t*>(
                    reinterpret_cast<uintptr_t>(base + (tile + kRowTile) * row_bytes) & ~uintptr_t(63));
                next_lines = (base + (tile + 2 * kRowTile) * row_bytes - next_first + 63) / 64;
            }
            const int64_t calls = (n_tokens + token_group - 1) / token_group * ((n_blocks + chunk_blocks - 1) / chunk_blocks);
            int64_t call = 0;
            for (int64_t t0 = 0; t0 < n_tokens; t0 += token_group) {
                const int n_tok = int(std::min(token_group, n_tokens - t0));
                for (int64_t c0 = 0; c0 < n_blocks; c0 += chunk_blocks) {
                    const int64_t nb = std::min(chunk_blocks, n_blocks - c0);
                    const int64_t act_offset = c0 / blocks_per_group * kGroupBytes;
                    for (int t = 0; t < n_tok; ++t) a[t] = group_acts + (t0 + t) * act_token_bytes + act_offset;
                    int64_t i = 0;
                    if (sixteen) {
                        const int64_t from = next_lines * call / calls, to = next_lines * (call + 1) / calls;
                        ++call;
                        // chunks start at whole activation groups (8 Q8_0 blocks), so at whole entries
                        rows_16(packed + c0 / entry_blocks, nb / entry_blocks, a, n_tok, sums,
                                {next_first + 64 * from, to - from});
                        for (int t = 0; t < n_tok; ++t)
                            for (int r = 0; r < kRowTile; ++r)
                                partial[t][r] = c0 == 0 ? sums[16 * t + r] : partial[t][r] + sums[16 * t + r];
                        i = kRowTile;
                    }
                    if (quad) {
                        for (; i + 4 <= tile_rows; i += 4) {
                            quad(base + (tile + i) * row_bytes + c0 * w_block_bytes, row_bytes, nb, a, n_tok, sums);
                            for (int t = 0; t < n_tok; ++t)
                                for (int r = 0; r < 4; ++r)
                                    partial[t][i + r] = c0 == 0 ? sums[4 * t + r] : partial[t][i + r] + sums[4 * t + r];
                        }
                    }
                    for (; i < tile_rows; ++i) {
                        // a row group takes table.token_group tokens a call (fewer than a quad's)
                        for (int t1 = 0; t1 < n_tok; t1 += int(table.token_group))
                            fn(base + (tile + i) * row_bytes + c0 * w_block_bytes, nb, a + t1,
                               std::min(int(table.token_group), n_tok - t1), sums + t1);
                        for (int t = 0; t < n_tok; ++t) partial[t][i] = c0 == 0 ? sums[t] : partial[t][i] + sums[t];
                    }
                }
                // A whole tile's 16 floats a token as one fixed-size copy: a copy of tile_rows went
                // through a memmove call per token, 18% of a grouped absorb's time (1-entry rows).
                if (tile_rows == kRowTile) {
                    for (int t = 0; t < n_tok; ++t)
                        std::memcpy(group_y + (t0 + t) * y_stride, partial[t], sizeof partial[t]);
                } else {
                    for (int t = 0; t < n_tok; ++t)
                        std::copy_n(partial[t], tile_rows, group_y + (t0 + t) * y_stride);
                }
            }
        }
    }, kRowTile);
}

}  // namespace

void quant_gemm_on_path(QuantDotPath path, const Matrix& w, const float* x, int64_t x_stride,
                        int64_t n_tokens, float* y, int64_t y_stride, ThreadPool& pool) {
    quant_gemm_groups(path, w, {}, x, x_stride, n_tokens, y, y_stride, pool);
}

void quant_gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
                int64_t y_stride, ThreadPool& pool) {
    quant_gemm_on_path(best_quant_dot_path(), w, x, x_stride, n_tokens, y, y_stride, pool);
}

void quant_gemm_grouped(const Matrix& w, const RowGroups& groups, const float* x, int64_t x_stride,
                        int64_t n_tokens, float* y, int64_t y_stride, ThreadPool& pool) {
    quant_gemm_groups(best_quant_dot_path(), w, groups, x, x_stride, n_tokens, y, y_stride, pool);
}

}  // namespace sluice::cpu
