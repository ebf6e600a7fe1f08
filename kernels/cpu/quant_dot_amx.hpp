// Intel AMX tile multiplies for the fused quantised GEMM (quant_dot.hpp's QuantDotPath::amx):
// Q4_K and Q6_K weights against int8 activations, 16 rows x 16 tokens x 64 bytes per instruction.
#pragma once

#include <cstdint>

#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/matrix.hpp"

namespace sluice::cpu::amx {

// The CPU has AMX-TILE and AMX-INT8 (and AVX-512 VNNI for the rest of the path) and Linux granted
// this process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once here).
bool available();
bool supports(DType type);

// quant_gemm's contract (y[t * y_stride + r] = dot(w row r, token t)) for a type `supports` takes.
void gemm(const Matrix& w, const float* x, int64_t x_stride, int64_t n_tokens, float* y, int64_t y_stride,
          ThreadPool& pool);

// The calling thread's packed activations for up to n_tokens x cols (grown now; bytes held), and
// each pool thread's packed weight tile and token quantisation scratch for cols.
void reserve_scratch(int64_t n_tokens, int64_t cols);
uint64_t scratch_bytes(int64_t n_tokens, int64_t cols);
void reserve_thread_scratch(int64_t cols);
uint64_t thread_scratch_bytes(int64_t cols);

}  // namespace sluice::cpu::amx
