// The CPU backend: the forward pass's ops on host memory with the kernels of kernels/cpu (AVX-512
// / AVX2 / scalar chosen at run time), threaded on a ThreadPool. Weight views are used in place:
// a resident arena, a staging slot or a cache entry of the streamer. It is the reference every
// other backend is tested against.
#pragma once

#include <algorithm>
#include <deque>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "core/thread_pool.hpp"
#include "engine/backend.hpp"

namespace sluice {

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(ThreadPool& pool) : pool_(&pool), n_threads_(pool.size()) {}
    // A backend that only counts: alloc_* add up what they would hold from the OS and return null
    // (DeepseekForward::bytes_for runs a forward's allocation against it); nothing may run on it.
    explicit CpuBackend(int n_threads_to_count) : pool_(nullptr), n_threads_(std::max(n_threads_to_count, 1)) {}

    // The most columns of any matrix the pass multiplies (the kernels' scratch is sized by it).
    static int64_t widest_matrix_cols(const ModelLayout& layout);

    std::string name() const override { return "cpu"; }
    bool uses_host_weights() const override { return true; }
    void reserve(const ModelLayout& layout, const ForwardShape& shape) override;

    float* alloc_floats(int64_t n) override { return static_cast<float*>(alloc(n * 4)); }
    float* alloc_cache_floats(int64_t n) override;
    int64_t cache_bytes() const { return cache_bytes_; }  // of allocated_bytes(): the latent cache
    int64_t* alloc_int64(int64_t n) override { return static_cast<int64_t*>(alloc(n * 8)); }
    int32_t* alloc_int32(int64_t n) override { return static_cast<int32_t*>(alloc(n * 4)); }
    int64_t allocated_bytes() const override { return allocated_bytes_; }
    size_t allocation_mark() const override { return buffers_.size(); }
    void release_to(size_t mark) override;
    void upload(void* dst, const void* host, size_t bytes) override;
    void download(void* host, const void* src, size_t bytes) override;
    void synchronize() override {}

    void embed(const Matrix& embedding, const int32_t* tokens_host, int64_t n, float* x) override;
    void rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t n_rows, int64_t width,
                  float* out, int64_t out_stride) override;
    void linear(const Matrix& w, const float* x, int64_t x_stride, int64_t n, float* y, int64_t y_stride) override;
    void add(float* x, const float* y, int64_t n) override;
    void silu_mul(float* gate, const float* up, int64_t n) override;
    void copy_rows(const float* src, int64_t src_stride, int64_t n_rows, int64_t width, float* dst,
                   int64_t dst_stride) override;
    void gather_rows(const float* rows, int64_t width, const int32_t* index, int64_t n_rows, float* out) override;
    void combine_slots(const float* expert_out, const int32_t* token_slots, const float* slot_weight, int64_t n_tokens,
                       int per_token, int64_t width, float* out) override;
    void rope(float* x, int64_t n_tokens, int n_heads, int64_t token_stride, int64_t head_stride, int dim,
              const int64_t* positions, const float* freq, float magnitude) override;
    void route(const float* logits, const float* bias, const cpu::RouterConfig& config, int64_t n_tokens,
               int32_t* expert_ids_host, float* expert_weights_host) override;

    void begin_latent_products(const LayerWeights& w, int layer, bool decompressed) override;
    void absorb_queries(const LayerWeights& w, const float* q, int64_t n, float* q_latent) override;
    void attention_absorbed(int64_t count, const float* q_latent, const float* q_rope, const float* cache_latent,
                            const float* cache_rope, const int64_t* n_visible, float* out) override;
    void unabsorb(const LayerWeights& w, const float* attn_latent, int64_t n, float* heads) override;
    void expand_latents(const LayerWeights& w, const float* latent, int64_t m, float* kv) override;
    void decompressed_begin(int64_t count, float* out, float* running_max, float* running_sum) override;
    void decompressed_block(int64_t count, const float* q, const float* q_rope, const float* kv, const float* k_rope,
                            int64_t first, int64_t m, const int64_t* n_visible, float* out, float* running_max,
                            float* running_sum) override;
    void decompressed_end(int64_t count, float* out, const float* running_sum) override;
    void output_logits(const Matrix& head, const float* normed, int64_t rows, float* logits_host) override;

private:
    void* alloc(int64_t bytes);

    ThreadPool& pool() const;

    ThreadPool* pool_;                       // null: counting only
    int n_threads_;
    MlaShape mla_;
    cpu::AttentionShape absorbed_shape_;
    cpu::DecompressedAttentionShape decompressed_shape_;
    int64_t hidden_ = 0;
    std::deque<AlignedBuffer> buffers_;
    int64_t allocated_bytes_ = 0;
    int64_t cache_bytes_ = 0;
    std::vector<int64_t> held_;              // what each of buffers_ holds (counting: the only record)
    float* attention_scratch_ = nullptr;     // the absorbed form's scores
    float* row_scratch_ = nullptr;           // per thread: a kv_rank row or rows being turned round
    int64_t row_scratch_floats_ = 0;
    float* w_uk_ = nullptr;                  // [heads, nope, kv_rank]: a k_b layer turned round
    // Under --attention-precision bf16 (where the CPU has it): w_uk_ holds W_UK as bf16 tiles
    // instead, and the expansion rounds a block's latents to bf16 pairs into latent_words_.
    bool bf16_expansion_ = false;
    uint32_t* latent_words_ = nullptr;
    float* decompressed_scratch_ = nullptr;
};

}  // namespace sluice
