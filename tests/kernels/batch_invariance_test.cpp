// Batch invariance of the matrix products and of attention: a token's output row must be the same
// bits whether it is computed alone or beside any number of other tokens. `sluice batch` relies on it for its
// promise that a request's greedy tokens do not depend on the requests sharing its steps.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/thread_pool.hpp"
#include "kernels/block_type.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/matmul_transposed.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/quant_dot.hpp"
#include "kernels/random_blocks.hpp"

using namespace sluice;

namespace {

// rows x cols random weights of `type` (FP8 with random block scales).
struct RandomMatrix {
    AlignedBuffer data, scales;
    Matrix m;
    RandomMatrix(DType type, int64_t rows, int64_t cols, uint64_t seed) {
        const auto& t = block_type(type);
        data.allocate(size_t(rows * row_bytes(type, cols)), 64);
        if (type == DType::FP8_E4M3_B128) {
            std::mt19937 rng{uint32_t(seed)};
            std::uniform_int_distribution<int> byte(0, 255);
            auto* p = data.as<uint8_t>();
            for (int64_t i = 0; i < rows * cols; ++i) {
                uint8_t b = uint8_t(byte(rng));
                if ((b & 0x7f) == 0x7f) b &= 0xfe;  // no NaN
                p[i] = b;
            }
            const int64_t n_scales = ((rows + 127) / 128) * ((cols + 127) / 128);
            scales.allocate(size_t(n_scales * 4), 64);
            std::uniform_real_distribution<float> s(1e-4f, 1e-3f);
            for (int64_t i = 0; i < n_scales; ++i) scales.as<float>()[i] = s(rng);
        } else {
            fill_random_blocks(type, RandomFill::gaussian_like, 0.05, seed, 0, data.data(),
                               rows * cols / t.block_elems);
        }
        m = {type, rows, cols, data.data(), type == DType::FP8_E4M3_B128 ? scales.as<float>() : nullptr, 0};
    }
};

// Every token of an n-token product equals the same token multiplied alone, bit for bit.
void check_invariant(DType type, ThreadPool& pool) {
    const int64_t rows = 96, cols = 7168;  // a V3 hidden width: several L1 column chunks
    RandomMatrix w(type, rows, cols, 11);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t n : {2, 3, 7, 8, 9, 16, 33}) {
        std::vector<float> x(size_t(n * cols)), y(size_t(n * rows)), alone(static_cast<size_t>(rows));
        for (auto& v : x) v = normal(rng);
        cpu::gemm(w.m, x.data(), cols, n, y.data(), rows, pool);
        for (int64_t t = 0; t < n; ++t) {
            cpu::gemm(w.m, x.data() + t * cols, cols, 1, alone.data(), rows, pool);
            INFO(dtype_name(type), ": token ", t, " of ", n);
            CHECK(std::memcmp(alone.data(), y.data() + t * rows, size_t(rows) * sizeof(float)) == 0);
        }
    }
}

}  // namespace

TEST_CASE("a token's matmul result does not depend on the tokens multiplied beside it") {
    ThreadPool pool(2);
    for (DType type : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q2_K, DType::Q3_K,
                       DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::FP8_E4M3_B128}) {
        for (auto mode : {cpu::QuantDot::fused, cpu::QuantDot::exact}) {
            cpu::set_quant_dot(mode);
            check_invariant(type, pool);
        }
    }
    cpu::set_quant_dot(cpu::QuantDot::fused);
}

// MLA's absorb step (the transposed product through a head's W_UK) and the absorbed attention
// itself run per token inside tiles of several tokens: each token's row must not depend on the
// others. Attention's tokens see different numbers of cache rows (a chunk after a context).
TEST_CASE("a token's absorb product and absorbed attention do not depend on the tokens beside it") {
    ThreadPool pool(2);
    std::mt19937 rng(9);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int64_t n = 11;
    {
        RandomMatrix w(DType::Q8_0, 128, 512, 3);  // a head's W_UK as a V3 GGUF's kv_b stores it
        std::vector<float> x(size_t(n * 192)), y(size_t(n * 512)), alone(512);
        std::vector<float> scratch(size_t(cpu::gemm_transposed_scratch_floats(128, 512)));
        for (auto& v : x) v = normal(rng);
        cpu::gemm_transposed(w.m, x.data(), 192, n, y.data(), 512, scratch.data());
        for (int64_t t = 0; t < n; ++t) {
            cpu::gemm_transposed(w.m, x.data() + t * 192, 192, 1, alone.data(), 512, scratch.data());
            INFO("absorb: token ", t);
            CHECK(std::memcmp(alone.data(), y.data() + t * 512, 512 * sizeof(float)) == 0);
        }
    }
    const cpu::AttentionShape shape{11, 512, 64, 0.07f};  // a group of 8 heads and a partial one
    const int64_t n_ctx = 37, latent_row = int64_t(shape.n_heads) * shape.kv_rank;
    std::vector<float> latent(size_t(n_ctx * shape.kv_rank)), rope(size_t(n_ctx * shape.rope_dim));
    std::vector<float> q_latent(size_t(n * latent_row)), q_rope(size_t(n * shape.n_heads * shape.rope_dim));
    for (auto* v : {&latent, &rope, &q_latent, &q_rope})
        for (auto& f : *v) f = 0.1f * normal(rng);
    std::vector<int64_t> visible(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) visible[size_t(t)] = n_ctx - n + 1 + t;
    std::vector<float> scratch(size_t(cpu::attention_scratch_floats(shape, n_ctx, pool.size())));
    std::vector<float> out(size_t(n * latent_row)), alone(static_cast<size_t>(latent_row));
    cpu::mla_attention_absorbed(shape, n, q_latent.data(), q_rope.data(), latent.data(), rope.data(), visible.data(),
                                out.data(), scratch.data(), pool);
    for (int64_t t = 0; t < n; ++t) {
        cpu::mla_attention_absorbed(shape, 1, q_latent.data() + t * latent_row,
                                    q_rope.data() + t * shape.n_heads * shape.rope_dim, latent.data(), rope.data(),
                                    visible.data() + t, alone.data(), scratch.data(), pool);
        INFO("attention: token ", t);
        CHECK(std::memcmp(alone.data(), out.data() + t * latent_row, size_t(latent_row) * sizeof(float)) == 0);
    }
}
