// Fused dots of quantised weight rows (as stored) with activations quantised once per call to int8:
// per 32 (Q8_0-style) for Q8_0 / Q4_0 weights, per 256 with per-16 sums (Q8_K-style, as llama.cpp)
// for the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Integer products are summed in int32 (per block,
// or per super-block with the integer sub-block scales), then scaled in float. Paths: scalar
// (the reference), AVX2, AVX-512 VNNI on 512-bit vectors (with GFNI where present), picked at run time.
#pragma once

#include <cstdint>

#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/matrix.hpp"

namespace sluice::cpu {

// amx: Q4_K and Q6_K through AMX tile multiplies (quant_dot_amx.hpp), every other type as avx512_vnni.
enum class QuantDotPath { scalar, avx2, avx512_vnni, amx };
const char* quant_dot_path_name(QuantDotPath path);

bool quant_dot_supports(DType type);
bool quant_dot_path_available(QuantDotPath path);
QuantDotPath best_quant_dot_path();

// The avx512_vnni path unpacks K-quant bit fields with GFNI's vgf2p8affineqb where the CPU has it
// (Ice Lake and later; Cascade Lake has VNNI without GFNI). false forces the plain AVX-512 unpacking
// (tests and benches cover both on one machine); process-wide, default true.
void set_quant_dot_gfni(bool allowed);
bool quant_dot_uses_gfni();
// K-quants four rows per kernel call where the path has such kernels (AVX-512); off, one row per
// call as on the other paths. For tests and benchmarks of both; on by default. The amx path's
// few-token kernel is four rows whatever this says: its bits must equal the tile kernel's.
void set_quant_dot_four_rows(bool allowed);

// y[t * y_stride + r] = dot(w row r, x[t * x_stride ...]) for t < n_tokens. w.cols must be whole
// blocks of w.type and w.type supported. Activations are quantised once per call into a
// per-thread scratch that only grows (no allocation per call after warm-up); each weight block is
// unpacked once per group of tokens (8 on AVX-512, 4 on AVX2 / scalar), and with many tokens rows
// are tiled against column chunks so one group's activations stay in L1.
void quant_gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y,
                int64_t y_stride, ThreadPool& pool);
void quant_gemm_on_path(QuantDotPath path, const Matrix& w, const float* x, int64_t x_stride,
                        int64_t n_tokens, float* y, int64_t y_stride, ThreadPool& pool);

// quant_gemm for each group of rows (RowGroups, matrix.hpp; groups.rows must divide w.rows): the
// same numbers as a call per group. The activations of groups with their own (x_offset != 0) are
// quantised side by side: n_tokens x (w.rows / groups.rows) rows of w.cols columns, each padded to
// whole 256-column activation groups (reserve_quant_gemm_grouped_scratch).
void quant_gemm_grouped(const Matrix& w, const RowGroups& groups, const float* x, int64_t x_stride,
                        int64_t n_tokens, float* y, int64_t y_stride, ThreadPool& pool);

// The calling thread's activation scratch for quant_gemm calls of up to n_tokens x cols, in both
// forms (per 32 and K-quant style): grown now, so that a forward that reserves its largest call
// before its first step allocates nothing in its steps, and the bytes that holds.
void reserve_quant_gemm_scratch(int64_t n_tokens, int64_t cols);
uint64_t quant_gemm_scratch_bytes(int64_t n_tokens, int64_t cols);
// The same for grouped calls of up to n_tokens x groups rows of cols columns (the caller's only).
void reserve_quant_gemm_grouped_scratch(int64_t n_tokens, int64_t groups, int64_t cols);
uint64_t quant_gemm_grouped_scratch_bytes(int64_t n_tokens, int64_t groups, int64_t cols);
// What each pool thread holds for quant_gemm calls of cols columns (a repacked sixteen-row tile on
// the AVX-512 and AMX paths, and the AMX path's packed weight tile and token scratch): reserve on every pool thread (the caller is
// thread 0 of ThreadPool::run_on_all, so that covers it too; counted here only, once a thread).
void reserve_quant_gemm_thread_scratch(int64_t cols);
uint64_t quant_gemm_thread_scratch_bytes(int64_t cols);

}  // namespace sluice::cpu
