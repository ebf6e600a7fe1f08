#include "engine/cpu_backend.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "kernels/cpu/gemm_bf16_tiles.hpp"
#include "kernels/cpu/matmul.hpp"
#include "kernels/cpu/matmul_transposed.hpp"
#include "kernels/cpu/quant_dot.hpp"

namespace sluice {

MlaShape MlaShape::from(const ModelLayout& d) {
    return {d.n_heads, d.kv_rank, d.nope, d.rope_dim, d.v_dim, d.qk_head, d.softmax_scale};
}

namespace {
cpu::AttentionShape absorbed_shape(const MlaShape& m) {
    return {int(m.n_heads), int(m.kv_rank), int(m.rope_dim), m.scale};
}
cpu::DecompressedAttentionShape decompressed_shape(const MlaShape& m) {
    return {int(m.n_heads), int(m.nope), int(m.rope_dim), int(m.v_dim), int(m.qk_head), m.scale};
}
// A head's W_UK in f32 for the transposed absorb product, or the rows transpose_to_f32 turns at a time.
int64_t row_scratch_per_thread(const ModelLayout& d) {
    return std::max(cpu::gemm_transposed_scratch_floats(d.nope, d.kv_rank), cpu::transpose_scratch_floats(d.nope));
}
}  // namespace

int64_t CpuBackend::widest_matrix_cols(const ModelLayout& d) {
    return std::max({d.hidden, d.q_lora, d.kv_rank, d.nope, d.n_heads * d.v_dim, d.dense_inter, d.moe_inter,
                     d.n_shared * d.moe_inter});
}

ThreadPool& CpuBackend::pool() const {
    if (!pool_) fail(ErrorKind::internal, "a counting CPU backend was asked to compute");
    return *pool_;
}

void* CpuBackend::alloc(int64_t bytes) {
    const size_t size = size_t(std::max<int64_t>(bytes, 4));
    const auto held = int64_t(AlignedBuffer::held_bytes(size));
    allocated_bytes_ += held;
    held_.push_back(held);
    if (!pool_) {
        buffers_.emplace_back();  // counting: nothing allocated, the position kept for release_to
        return nullptr;
    }
    auto& b = buffers_.emplace_back(size, 64);
    return b.data();
}

float* CpuBackend::alloc_cache_floats(int64_t n) {
    float* p = alloc_floats(n);
    cache_bytes_ += held_.back();
    return p;
}

void CpuBackend::release_to(size_t mark) {
    while (buffers_.size() > mark) {
        allocated_bytes_ -= held_.back();
        held_.pop_back();
        buffers_.pop_back();
    }
}

void CpuBackend::reserve(const ModelLayout& d, const ForwardShape& s) {
    mla_ = MlaShape::from(d);
    absorbed_shape_ = absorbed_shape(mla_);
    absorbed_shape_.math = cpu::attention_math();  // the scratch below is sized for it
    decompressed_shape_ = decompressed_shape(mla_);
    decompressed_shape_.math = absorbed_shape_.math;
    hidden_ = d.hidden;
    const int threads = n_threads_;
    row_scratch_floats_ = row_scratch_per_thread(d);
    row_scratch_ = alloc_floats(int64_t(threads) * row_scratch_floats_);
    attention_scratch_ = alloc_floats(cpu::attention_scratch_floats(absorbed_shape_, s.max_context, threads));
    // k_b turned round for the decompressed form: only files that split kv_b need it. The bf16
    // tiles are packed a head at a time: each head's nope rows must make whole tiles.
    const int64_t block = std::min(s.max_context, s.decompress_block);
    bf16_expansion_ = d.split_kv_b && absorbed_shape_.math == cpu::AttentionMath::bf16 &&
                      cpu::bf16_tiles_supported(d.nope, d.kv_rank);
    if (bf16_expansion_) {
        w_uk_ = static_cast<float*>(alloc(cpu::bf16_tile_words(d.n_heads * d.nope, d.kv_rank) * 4));
        latent_words_ = static_cast<uint32_t*>(alloc(cpu::bf16_tiles_activation_words(block, d.kv_rank) * 4));
    } else if (d.split_kv_b) {
        w_uk_ = alloc_floats(d.n_heads * d.nope * d.kv_rank);
    }
    decompressed_scratch_ =
        alloc_floats(cpu::decompressed_attention_scratch_floats(decompressed_shape_, block, threads));
    // The matmul kernels' per-thread scratch, for the largest calls of a step, before the first one
    // (they keep it, grown only; the planner counts it as gemm_scratch_bytes).
    if (pool_) {
        cpu::reserve_gemm_scratch(s.max_batch_tokens, widest_matrix_cols(d), *pool_);
        cpu::reserve_gemm_scratch(block, d.kv_rank, *pool_);
        // the grouped absorb (nope columns a head) and un-absorb (kv_rank): every head's activations side by side
        cpu::reserve_quant_gemm_grouped_scratch(std::min(s.max_batch_tokens, s.absorbed_piece), d.n_heads,
                                                std::max(d.nope, d.kv_rank));
    }
}

void CpuBackend::upload(void* dst, const void* host, size_t bytes) {
    if (!pool_) return;  // counting: nothing to copy into
    if (dst != host) std::memcpy(dst, host, bytes);
}

void CpuBackend::download(void* host, const void* src, size_t bytes) {
    if (host != src) std::memcpy(host, src, bytes);
}

void CpuBackend::embed(const Matrix& embedding, const int32_t* tokens, int64_t n, float* x) {
    const auto& type = block_type(embedding.type);
    for (int64_t t = 0; t < n; ++t) type.dequantize_row(embedding.row(tokens[t]), x + t * embedding.cols, embedding.cols);
}

void CpuBackend::rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t n_rows, int64_t width,
                          float* out, int64_t out_stride) {
    for (int64_t r = 0; r < n_rows; ++r) cpu::rms_norm(x + r * x_stride, w, eps, width, out + r * out_stride);
}

void CpuBackend::linear(const Matrix& w, const float* x, int64_t x_stride, int64_t n, float* y, int64_t y_stride) {
    cpu::gemm(w, x, x_stride, n, y, y_stride, pool());
}

void CpuBackend::add(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void CpuBackend::silu_mul(float* gate, const float* up, int64_t n) { cpu::silu_mul(gate, up, n, gate); }

void CpuBackend::copy_rows(const float* src, int64_t src_stride, int64_t n_rows, int64_t width, float* dst,
                           int64_t dst_stride) {
    for (int64_t r = 0; r < n_rows; ++r)
        std::memcpy(dst + r * dst_stride, src + r * src_stride, size_t(width) * sizeof(float));
}

void CpuBackend::gather_rows(const float* rows, int64_t width, const int32_t* index, int64_t n_rows, float* out) {
    for (int64_t r = 0; r < n_rows; ++r)
        std::memcpy(out + r * width, rows + int64_t(index[r]) * width, size_t(width) * sizeof(float));
}

void CpuBackend::combine_slots(const float* expert_out, const int32_t* token_slots, const float* slot_weight,
                               int64_t n_tokens, int per_token, int64_t width, float* out) {
    for (int64_t t = 0; t < n_tokens; ++t) {
        float* o = out + t * width;
        std::fill(o, o + width, 0.0f);
        for (int j = 0; j < per_token; ++j) {
            const int32_t s = token_slots[t * per_token + j];
            const float weight = slot_weight[s];
            const float* r = expert_out + int64_t(s) * width;
            for (int64_t c = 0; c < width; ++c) o[c] += weight * r[c];
        }
    }
}

void CpuBackend::rope(float* x, int64_t n_tokens, int n_heads, int64_t token_stride, int64_t head_stride, int dim,
                      const int64_t* positions, const float* freq, float magnitude) {
    for (int64_t t = 0; t < n_tokens; ++t)
        for (int h = 0; h < n_heads; ++h)
            cpu::rope_interleaved(x + t * token_stride + h * head_stride, dim, positions[t], freq, magnitude);
}

void CpuBackend::route(const float* logits, const float* bias, const cpu::RouterConfig& config, int64_t n_tokens,
                       int32_t* ids, float* weights) {
    const int k = config.top_k;
    for (int64_t t = 0; t < n_tokens; ++t)
        cpu::route(logits + t * config.n_experts, bias, config, ids + t * k, weights + t * k);
}

// k_b holds W_UK^T per head ([kv_rank, nope]): for the decompressed form it is turned round once
// per layer into f32 W_UK ([nope, kv_rank]), so that the expansion is an ordinary GEMM (the
// transposed product ran at 57 GFLOP/s, under half the f32 GEMM's rate), or under bf16 attention
// into bf16 sixteen-row tiles of W_UK (gemm_bf16_tiles.hpp: twice the multiply-adds an
// instruction). The absorb needs no turning: it is k_b's own product, q~_h = k_b_h q_nope_h
// (absorb_queries).
void CpuBackend::begin_latent_products(const LayerWeights& w, int layer, bool decompressed) {
    if (w.kv_b.rows > 0 || !decompressed) return;
    if (!w_uk_)
        fail(ErrorKind::invalid_input, "layer {}: attn_k_b in a model whose layout said kv_b (split_kv_b false)", layer);
    const MlaShape& m = mla_;
    pool().parallel_for(m.n_heads, [&](int64_t h0, int64_t h1, int thread) {
        float* scratch = row_scratch_ + int64_t(thread) * row_scratch_floats_;
        for (int64_t h = h0; h < h1; ++h) {
            const Matrix k_b_h = w.k_b.row_slice(h * m.kv_rank, m.kv_rank);
            if (bf16_expansion_)
                cpu::pack_bf16_tiles_transposed(k_b_h, reinterpret_cast<uint32_t*>(w_uk_) +
                                                           h * cpu::bf16_tile_words(m.nope, m.kv_rank), scratch);
            else
                cpu::transpose_to_f32(k_b_h, w_uk_ + h * m.nope * m.kv_rank, scratch);
        }
    });
}

// q~_h = W_UK_h^T q_nope_h for every head. From a split k_b (the GGUFs of the family: W_UK^T per
// head, [kv_rank, nope] rows of 128 columns) it is k_b's own product, all heads in one grouped
// GEMM: with a Q8_0 k_b q_nope is rounded through 8-bit blocks as llama.cpp's fused product does,
// and on AVX-512 sixteen rows go a call. At V3's shape (128 heads, 2 threads, Zen 4) that is 15 ms
// a layer for a 128-token piece, as fast as the f32 W_UK route it replaces (which first turned
// k_b round, 2.5-4 ms a layer, in every decode step), and at 16 tokens 1.5 ms against 6.6.
void CpuBackend::absorb_queries(const LayerWeights& w, const float* q, int64_t n, float* q_latent) {
    const MlaShape& m = mla_;
    const int64_t q_stride = m.n_heads * m.qk_head, latent_stride = m.n_heads * m.kv_rank;
    if (w.kv_b.rows > 0) {
        // kv_b rows per head: [W_UK_h (nope) | W_UV_h (v)]; the absorb is the transposed product.
        const int64_t head_rows = m.nope + m.v_dim;
        pool().parallel_for(m.n_heads, [&](int64_t h0, int64_t h1, int thread) {
            float* scratch = row_scratch_ + int64_t(thread) * row_scratch_floats_;
            for (int64_t h = h0; h < h1; ++h)
                cpu::gemm_transposed(w.kv_b.row_slice(h * head_rows, m.nope), q + h * m.qk_head, q_stride, n,
                                     q_latent + h * m.kv_rank, latent_stride, scratch);
        });
        return;
    }
    cpu::gemm_grouped(w.k_b, {m.kv_rank, m.qk_head, m.kv_rank}, q, q_stride, n, q_latent, latent_stride, pool());
}

void CpuBackend::attention_absorbed(int64_t count, const float* q_latent, const float* q_rope,
                                    const float* cache_latent, const float* cache_rope, const int64_t* n_visible,
                                    float* out) {
    cpu::mla_attention_absorbed(absorbed_shape_, count, q_latent, q_rope, cache_latent, cache_rope, n_visible, out,
                                attention_scratch_, pool());
}

// o_h = W_UV_h . c^_h ([v_dim, kv_rank] per head): from a split v_b one grouped GEMM over the
// heads (each its own activations), which at V3's shape halved the time of 128 calls.
void CpuBackend::unabsorb(const LayerWeights& w, const float* attn_latent, int64_t n, float* heads) {
    const MlaShape& m = mla_;
    const int64_t latent_stride = m.n_heads * m.kv_rank, heads_stride = m.n_heads * m.v_dim;
    if (w.kv_b.rows == 0)
        return cpu::gemm_grouped(w.v_b, {m.v_dim, m.kv_rank, m.v_dim}, attn_latent, latent_stride, n, heads,
                                 heads_stride, pool());
    const int64_t head_rows = m.nope + m.v_dim;
    for (int64_t h = 0; h < m.n_heads; ++h)
        cpu::gemm(w.kv_b.row_slice(h * head_rows + m.nope, m.v_dim), attn_latent + h * m.kv_rank, latent_stride, n,
                  heads + h * m.v_dim, heads_stride, pool());
}

void CpuBackend::expand_latents(const LayerWeights& w, const float* latent, int64_t count, float* kv) {
    const MlaShape& m = mla_;
    const int64_t kv_head = m.nope + m.v_dim, kv_row = m.n_heads * kv_head;
    if (w.kv_b.rows > 0) {
        cpu::gemm(w.kv_b, latent, m.kv_rank, count, kv, kv_row, pool());  // rows per head: [nope | v]
        return;
    }
    // W_UK turned round by begin_latent_products; v_b holds W_UV per head as the GEMM wants it, and
    // takes every head in one grouped call (the latents quantised once for all of them).
    if (bf16_expansion_)
        cpu::gemm_bf16_tiles(reinterpret_cast<const uint32_t*>(w_uk_), m.n_heads * m.nope, m.kv_rank,
                             {m.nope, 0, kv_head}, latent, m.kv_rank, count, kv, kv_row, latent_words_, pool());
    else
        for (int64_t h = 0; h < m.n_heads; ++h) {
            const Matrix w_uk_h{DType::F32, m.nope, m.kv_rank, w_uk_ + h * m.nope * m.kv_rank, nullptr, 0};
            cpu::gemm(w_uk_h, latent, m.kv_rank, count, kv + h * kv_head, kv_row, pool());
        }
    cpu::gemm_grouped(w.v_b, {m.v_dim, 0, kv_head}, latent, m.kv_rank, count, kv + m.nope, kv_row, pool());
}

void CpuBackend::decompressed_begin(int64_t count, float* out, float* running_max, float* running_sum) {
    cpu::mla_decompressed_begin(decompressed_shape_, count, out, running_max, running_sum);
}

void CpuBackend::decompressed_block(int64_t count, const float* q, const float* q_rope, const float* kv,
                                    const float* k_rope, int64_t first, int64_t m, const int64_t* n_visible, float* out,
                                    float* running_max, float* running_sum) {
    cpu::mla_attention_decompressed_block(decompressed_shape_, count, q, q_rope, kv, k_rope, first, m, n_visible, out,
                                          running_max, running_sum, decompressed_scratch_, pool());
}

void CpuBackend::decompressed_end(int64_t count, float* out, const float* running_sum) {
    cpu::mla_decompressed_end(decompressed_shape_, count, out, running_sum);
}

void CpuBackend::output_logits(const Matrix& head, const float* normed, int64_t rows, float* logits) {
    cpu::gemm(head, normed, head.cols, rows, logits, head.rows, pool());
}

}  // namespace sluice
