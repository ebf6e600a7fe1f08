#include "engine/cuda/cuda_forward.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>

#include "core/error.hpp"
#include "engine/cuda/device_weight_cache.hpp"
#include "kernels/cuda/attention.hpp"
#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/device.hpp"
#include "kernels/cuda/device_memory.hpp"
#include "kernels/cuda/gemm.hpp"
#include "kernels/cuda/gemv.hpp"
#include "kernels/cuda/ops.hpp"
#include "kernels/cuda/streams.hpp"

namespace sluice::cuda {

struct CudaForward::State {
    Stream stream;
    Gemm gemm;
    cublasHandle_t heads_blas = nullptr;  // batched fp32 products over heads
    DeviceWeightCache global_cache;       // embedding-side and head weights, per-layer vectors
    DeviceWeightCache layer_cache;        // matrices and experts of the layers
    bool weights_stay = true;             // the provider's host addresses keep their contents

    // Activations [max_batch_tokens, width].
    DeviceBuffer x, normed, q_compressed, q, ckv, q_latent, q_rope, attn_latent, heads, branch, shared_out,
        router_logits, gathered, gate, up, expert_out, logits, attention_scratch, latent_f32;
    DeviceBuffer positions, n_visible, expert_ids, expert_weights, routed_token, token_slots, slot_weight, rope_freq;
    std::vector<DeviceBuffer> cache_latent, cache_rope;  // per layer [max_context, kv_rank] / [.., rope]

    // Host mirrors.
    std::vector<float> host_x;
    std::vector<int64_t> host_positions, host_visible;
    std::vector<int> host_ids;
    std::vector<float> host_weights;
    std::vector<int32_t> expert_count, expert_begin, needed, host_routed_token, host_token_slots, token_fill;
    std::vector<float> host_slot_weight;
    int64_t activation_bytes = 0;

    State(int64_t budget) : global_cache(budget / 4), layer_cache(budget - budget / 4) {
        SLUICE_CUBLAS_CHECK(cublasCreate(&heads_blas));
        SLUICE_CUBLAS_CHECK(cublasSetStream(heads_blas, stream));
    }
    ~State() {
        if (heads_blas) cublasDestroy(heads_blas);
    }
    void alloc(DeviceBuffer& b, int64_t bytes) {
        b = DeviceBuffer(size_t(std::max<int64_t>(bytes, 4)));
        activation_bytes += int64_t(b.size_bytes());
    }
};

namespace {
float* f(const DeviceBuffer& b) { return b.as<float>(); }
}  // namespace

CudaForward::CudaForward(const ModelLayout& layout, WeightProvider& weights, CudaForwardOptions options)
    : layout_(layout), weights_(weights), options_(options) {
    const auto q = query_devices();
    if (q.devices.empty()) fail(ErrorKind::unsupported, "CUDA forward: {}", q.reason);
    const auto& d = layout_;
    const int64_t n = options_.max_batch_tokens;
    if (n <= 0 || options_.max_context <= 0) fail(ErrorKind::invalid_input, "batch and context sizes must be positive");
    state_ = std::make_unique<State>(options_.weight_budget_bytes);
    auto& s = *state_;
    const int k = std::max(d.router.top_k, 1);
    const int64_t widest = std::max({d.dense_inter, d.moe_inter, d.n_shared * d.moe_inter, int64_t(1)});
    s.alloc(s.x, n * d.hidden * 4);
    s.alloc(s.normed, n * d.hidden * 4);
    s.alloc(s.q_compressed, n * std::max<int64_t>(d.q_lora, 1) * 4);
    s.alloc(s.q, n * d.n_heads * d.qk_head * 4);
    s.alloc(s.ckv, n * d.cache_width() * 4);
    s.alloc(s.q_latent, n * d.n_heads * d.kv_rank * 4);
    s.alloc(s.q_rope, n * d.n_heads * d.rope_dim * 4);
    s.alloc(s.attn_latent, n * d.n_heads * d.kv_rank * 4);
    s.alloc(s.heads, n * d.n_heads * d.v_dim * 4);
    s.alloc(s.branch, n * d.hidden * 4);
    s.alloc(s.shared_out, n * d.hidden * 4);
    s.alloc(s.router_logits, n * std::max<int64_t>(d.n_experts, 1) * 4);
    s.alloc(s.gathered, n * d.hidden * 4);
    s.alloc(s.gate, n * widest * 4);
    s.alloc(s.up, n * widest * 4);
    s.alloc(s.expert_out, n * k * d.hidden * 4);
    s.alloc(s.logits, n * d.vocab * 4);
    const cpu::AttentionShape shape{int(d.n_heads), int(d.kv_rank), int(d.rope_dim), d.softmax_scale};
    s.alloc(s.attention_scratch, attention_scratch_floats(shape, n, options_.max_context) * 4);
    // kv_b [heads * (nope + v), kv_rank] or k_b + v_b, dequantised to f32 per layer.
    s.alloc(s.latent_f32, d.n_heads * (d.nope + d.v_dim) * d.kv_rank * 4);
    s.alloc(s.positions, n * 8);
    s.alloc(s.n_visible, n * 8);
    s.alloc(s.expert_ids, n * k * 4);
    s.alloc(s.expert_weights, n * k * 4);
    s.alloc(s.routed_token, n * k * 4);
    s.alloc(s.token_slots, n * k * 4);
    s.alloc(s.slot_weight, n * k * 4);
    const auto freq = cpu::yarn_frequencies(d.rope);
    s.alloc(s.rope_freq, int64_t(freq.size()) * 4);
    SLUICE_CUDA_CHECK(cudaMemcpy(s.rope_freq.data(), freq.data(), freq.size() * 4, cudaMemcpyHostToDevice));
    s.cache_latent.resize(size_t(d.n_layers));
    s.cache_rope.resize(size_t(d.n_layers));
    for (int l = 0; l < d.n_layers; ++l) {
        s.alloc(s.cache_latent[size_t(l)], options_.max_context * d.kv_rank * 4);
        s.alloc(s.cache_rope[size_t(l)], options_.max_context * d.rope_dim * 4);
    }
    s.host_x.resize(size_t(n * d.hidden));
    s.host_positions.resize(size_t(n));
    s.host_visible.resize(size_t(n));
    s.host_ids.resize(size_t(n * k));
    s.host_weights.resize(size_t(n * k));
    s.expert_count.resize(size_t(std::max<int64_t>(d.n_experts, 1)));
    s.expert_begin.resize(size_t(d.n_experts + 1));
    s.needed.reserve(size_t(d.n_experts));
    s.host_routed_token.resize(size_t(n * k));
    s.host_token_slots.resize(size_t(n * k));
    s.token_fill.resize(size_t(n));
    s.host_slot_weight.resize(size_t(n * k));
    // A provider that streams hands out staging slots whose contents change: copies keyed by
    // address are then valid for one layer only.
    s.weights_stay = dynamic_cast<ResidentWeights*>(&weights_) != nullptr;
}

CudaForward::~CudaForward() = default;

int64_t CudaForward::allocated_bytes() const { return state_->activation_bytes; }
int64_t CudaForward::weight_bytes() const { return state_->global_cache.used_bytes() + state_->layer_cache.used_bytes(); }

void CudaForward::truncate(int64_t n) {
    if (n < 0 || n > n_past_) fail(ErrorKind::internal, "truncate to {} with {} positions cached", n, n_past_);
    n_past_ = n;
}

void CudaForward::forward(std::span<const int32_t> tokens, bool all_logits, float* logits) {
    const int64_t n = int64_t(tokens.size());
    for (int64_t begin = 0; begin < n; begin += options_.max_batch_tokens) {
        const int64_t count = std::min(options_.max_batch_tokens, n - begin);
        const bool last_chunk = begin + count == n;
        float* out = all_logits ? logits + begin * layout_.vocab : (last_chunk ? logits : nullptr);
        run_step(tokens.subspan(size_t(begin), size_t(count)), all_logits, out);
    }
}

void CudaForward::run_step(std::span<const int32_t> tokens, bool all_logits, float* logits) {
    const auto& d = layout_;
    auto& s = *state_;
    cudaStream_t st = s.stream;
    const int64_t n = int64_t(tokens.size());
    const int64_t past = n_past_;
    if (past + n > options_.max_context)
        fail(ErrorKind::invalid_input, "context full: {} cached + {} new positions exceed the context of {}", past, n,
             options_.max_context);
    if (n == 0) return;

    // y = W x on the device, W handed out as a host view.
    auto linear = [&](DeviceWeightCache& cache, const Matrix& w, const float* in, int64_t in_stride, int64_t rows,
                      float* out, int64_t out_stride) {
        const Matrix dw = cache.device(w, st);
        if (rows < options_.gemm_min_tokens) gemv_batched(dw, in, in_stride, rows, out, out_stride, st);
        else s.gemm.run(dw, in, in_stride, rows, out, out_stride, st);
    };
    auto mlp = [&](const ExpertWeights& w, const float* in, int64_t rows, float* out) {
        const int64_t width = w.gate.rows;
        linear(s.layer_cache, w.gate, in, d.hidden, rows, f(s.gate), width);
        linear(s.layer_cache, w.up, in, d.hidden, rows, f(s.up), width);
        silu_mul(f(s.gate), f(s.up), rows * width, f(s.gate), st);
        linear(s.layer_cache, w.down, f(s.gate), width, rows, out, d.hidden);
    };

    weights_.begin_step(n);
    const ModelWeights& globals = weights_.globals();
    const auto& embed_type = block_type(globals.embed.type);
    for (int64_t t = 0; t < n; ++t) {
        const int32_t token = tokens[size_t(t)];
        if (token < 0 || token >= d.vocab)
            fail(ErrorKind::invalid_input, "token id {} is outside the vocabulary [0, {})", token, d.vocab);
        embed_type.dequantize_row(globals.embed.row(token), s.host_x.data() + t * d.hidden, d.hidden);
        s.host_positions[size_t(t)] = past + t;
        s.host_visible[size_t(t)] = past + t + 1;
    }
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.x.data(), s.host_x.data(), size_t(n * d.hidden) * 4, cudaMemcpyHostToDevice, st));
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.positions.data(), s.host_positions.data(), size_t(n) * 8, cudaMemcpyHostToDevice, st));
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.n_visible.data(), s.host_visible.data(), size_t(n) * 8, cudaMemcpyHostToDevice, st));

    const int64_t q_stride = d.n_heads * d.qk_head;
    const int64_t latent_stride = d.n_heads * d.kv_rank;
    const int64_t heads_stride = d.n_heads * d.v_dim;
    const int64_t cw = d.cache_width();
    const float one = 1.0f, zero = 0.0f;

    for (int l = 0; l < d.n_layers; ++l) {
        s.layer_cache.begin_use();
        const LayerWeights& w = weights_.begin_layer(l);
        auto vec = [&](const float* host, int64_t len) { return s.global_cache.device(host, len, st); };

        // ---- x = x + MLA(RMSNorm(x))
        rms_norm(f(s.x), d.hidden, vec(w.attn_norm, d.hidden), d.rms_eps, n, d.hidden, f(s.normed), d.hidden, st);
        if (d.q_lora > 0) {
            linear(s.layer_cache, w.q_a, f(s.normed), d.hidden, n, f(s.q_compressed), d.q_lora);
            rms_norm(f(s.q_compressed), d.q_lora, vec(w.q_a_norm, d.q_lora), d.latent_norm_eps, n, d.q_lora,
                     f(s.q_compressed), d.q_lora, st);
            linear(s.layer_cache, w.q_b, f(s.q_compressed), d.q_lora, n, f(s.q), q_stride);
        } else {
            linear(s.layer_cache, w.q, f(s.normed), d.hidden, n, f(s.q), q_stride);
        }
        linear(s.layer_cache, w.kv_a, f(s.normed), d.hidden, n, f(s.ckv), cw);
        // Cache the normalised latent and the roped key of the new positions.
        float* cache_latent = f(s.cache_latent[size_t(l)]);
        float* cache_rope = f(s.cache_rope[size_t(l)]);
        rms_norm(f(s.ckv), cw, vec(w.kv_a_norm, d.kv_rank), d.latent_norm_eps, n, d.kv_rank,
                 cache_latent + past * d.kv_rank, d.kv_rank, st);
        SLUICE_CUDA_CHECK(cudaMemcpy2DAsync(cache_rope + past * d.rope_dim, size_t(d.rope_dim) * 4, f(s.ckv) + d.kv_rank,
                                            size_t(cw) * 4, size_t(d.rope_dim) * 4, size_t(n), cudaMemcpyDeviceToDevice, st));
        rope_interleaved(cache_rope + past * d.rope_dim, n, 1, d.rope_dim, d.rope_dim, int(d.rope_dim),
                         s.positions.as<int64_t>(), f(s.rope_freq), d.rope_magnitude, st);
        SLUICE_CUDA_CHECK(cudaMemcpy2DAsync(f(s.q_rope), size_t(d.rope_dim) * 4, f(s.q) + d.nope, size_t(d.qk_head) * 4,
                                            size_t(d.rope_dim) * 4, size_t(n * d.n_heads), cudaMemcpyDeviceToDevice, st));
        rope_interleaved(f(s.q_rope), n, int(d.n_heads), d.n_heads * d.rope_dim, d.rope_dim, int(d.rope_dim),
                         s.positions.as<int64_t>(), f(s.rope_freq), d.rope_magnitude, st);

        // Absorb q~_h = W_UK_h^T q_nope_h and, after attention, o_h = W_UV_h c^_h: fp32 batched
        // products over heads on the dequantised latent projections (column-major views of
        // row-major storage; see kernels/cuda/gemm.cu for the mapping).
        const int m_tokens = int(n);
        const int64_t head_rows = d.nope + d.v_dim;
        float* kvf = f(s.latent_f32);
        if (w.kv_b.rows > 0) {
            dequantize_to_f32(s.layer_cache.device(w.kv_b, st), kvf, st);
            SLUICE_CUBLAS_CHECK(cublasSgemmStridedBatched(
                s.heads_blas, CUBLAS_OP_N, CUBLAS_OP_N, int(d.kv_rank), m_tokens, int(d.nope), &one, kvf, int(d.kv_rank),
                head_rows * d.kv_rank, f(s.q), int(q_stride), d.qk_head, &zero, f(s.q_latent), int(latent_stride),
                d.kv_rank, int(d.n_heads)));
        } else {
            dequantize_to_f32(s.layer_cache.device(w.k_b, st), kvf, st);
            SLUICE_CUBLAS_CHECK(cublasSgemmStridedBatched(
                s.heads_blas, CUBLAS_OP_T, CUBLAS_OP_N, int(d.kv_rank), m_tokens, int(d.nope), &one, kvf, int(d.nope),
                d.kv_rank * d.nope, f(s.q), int(q_stride), d.qk_head, &zero, f(s.q_latent), int(latent_stride),
                d.kv_rank, int(d.n_heads)));
        }
        const cpu::AttentionShape shape{int(d.n_heads), int(d.kv_rank), int(d.rope_dim), d.softmax_scale};
        mla_attention_absorbed(shape, n, f(s.q_latent), f(s.q_rope), cache_latent, cache_rope, s.n_visible.as<int64_t>(),
                               options_.max_context, f(s.attn_latent), f(s.attention_scratch), st);
        if (w.kv_b.rows > 0) {
            SLUICE_CUBLAS_CHECK(cublasSgemmStridedBatched(
                s.heads_blas, CUBLAS_OP_T, CUBLAS_OP_N, int(d.v_dim), m_tokens, int(d.kv_rank), &one,
                kvf + d.nope * d.kv_rank, int(d.kv_rank), head_rows * d.kv_rank, f(s.attn_latent), int(latent_stride),
                d.kv_rank, &zero, f(s.heads), int(heads_stride), d.v_dim, int(d.n_heads)));
        } else {
            float* vbf = kvf + d.n_heads * d.kv_rank * d.nope;
            dequantize_to_f32(s.layer_cache.device(w.v_b, st), vbf, st);
            SLUICE_CUBLAS_CHECK(cublasSgemmStridedBatched(
                s.heads_blas, CUBLAS_OP_T, CUBLAS_OP_N, int(d.v_dim), m_tokens, int(d.kv_rank), &one, vbf, int(d.kv_rank),
                d.v_dim * d.kv_rank, f(s.attn_latent), int(latent_stride), d.kv_rank, &zero, f(s.heads),
                int(heads_stride), d.v_dim, int(d.n_heads)));
        }
        linear(s.layer_cache, w.o, f(s.heads), heads_stride, n, f(s.branch), d.hidden);
        add_inplace(f(s.x), f(s.branch), n * d.hidden, st);

        // ---- x = x + MLP/MoE(RMSNorm(x))
        rms_norm(f(s.x), d.hidden, vec(w.ffn_norm, d.hidden), d.rms_eps, n, d.hidden, f(s.normed), d.hidden, st);
        if (!w.is_moe) {
            mlp(w.dense, f(s.normed), n, f(s.branch));
        } else {
            const int k = d.router.top_k;
            linear(s.layer_cache, w.router, f(s.normed), d.hidden, n, f(s.router_logits), d.n_experts);
            route(f(s.router_logits), w.router_bias ? vec(w.router_bias, d.n_experts) : nullptr, d.router, n,
                  s.expert_ids.as<int>(), f(s.expert_weights), st);
            SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.host_ids.data(), s.expert_ids.data(), size_t(n * k) * 4,
                                              cudaMemcpyDeviceToHost, st));
            SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.host_weights.data(), s.expert_weights.data(), size_t(n * k) * 4,
                                              cudaMemcpyDeviceToHost, st));
            s.stream.synchronize();
            // Group (token, weight) pairs by expert, ascending: the CPU pass's slot order.
            std::fill(s.expert_count.begin(), s.expert_count.end(), 0);
            for (int64_t i = 0; i < n * k; ++i) ++s.expert_count[size_t(s.host_ids[size_t(i)])];
            s.expert_begin[0] = 0;
            s.needed.clear();
            for (int64_t e = 0; e < d.n_experts; ++e) {
                s.expert_begin[size_t(e + 1)] = s.expert_begin[size_t(e)] + s.expert_count[size_t(e)];
                if (s.expert_count[size_t(e)] > 0) s.needed.push_back(int32_t(e));
            }
            std::fill(s.expert_count.begin(), s.expert_count.end(), 0);
            for (int64_t t = 0; t < n; ++t)
                for (int j = 0; j < k; ++j) {
                    const int e = s.host_ids[size_t(t * k + j)];
                    const int32_t slot = s.expert_begin[size_t(e)] + s.expert_count[size_t(e)]++;
                    s.host_routed_token[size_t(slot)] = int32_t(t);
                    s.host_slot_weight[size_t(slot)] = s.host_weights[size_t(t * k + j)];
                }
            // Each token's slots in ascending order, so the combine sums as the CPU does.
            std::fill(s.token_fill.begin(), s.token_fill.begin() + n, 0);
            for (int64_t slot = 0; slot < n * k; ++slot) {
                const int32_t t = s.host_routed_token[size_t(slot)];
                s.host_token_slots[size_t(t * k + s.token_fill[size_t(t)]++)] = int32_t(slot);
            }
            SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.routed_token.data(), s.host_routed_token.data(), size_t(n * k) * 4,
                                              cudaMemcpyHostToDevice, st));
            SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.token_slots.data(), s.host_token_slots.data(), size_t(n * k) * 4,
                                              cudaMemcpyHostToDevice, st));
            SLUICE_CUDA_CHECK(cudaMemcpyAsync(s.slot_weight.data(), s.host_slot_weight.data(), size_t(n * k) * 4,
                                              cudaMemcpyHostToDevice, st));
            weights_.need_experts(l, s.needed);
            const ExpertWeights* ex = nullptr;
            for (int32_t e; (e = weights_.next_expert(l, &ex)) >= 0;) {
                const int32_t begin = s.expert_begin[size_t(e)], count = s.expert_count[size_t(e)];
                gather_rows(f(s.normed), s.routed_token.as<int32_t>() + begin, count, d.hidden, f(s.gathered), st);
                mlp(*ex, f(s.gathered), count, f(s.expert_out) + int64_t(begin) * d.hidden);
                // Streamed expert slots are reused once handed back: finish with this one first.
                if (!s.weights_stay) s.stream.synchronize();
            }
            combine_slots(f(s.expert_out), s.token_slots.as<int32_t>(), f(s.slot_weight), n, k, d.hidden, f(s.branch), st);
            if (d.n_shared > 0) {
                mlp(w.shared, f(s.normed), n, f(s.shared_out));
                add_inplace(f(s.branch), f(s.shared_out), n * d.hidden, st);
            }
        }
        add_inplace(f(s.x), f(s.branch), n * d.hidden, st);
        s.stream.synchronize();  // the provider may release or reuse this layer's host memory
        if (!s.weights_stay) s.layer_cache = DeviceWeightCache(options_.weight_budget_bytes - options_.weight_budget_bytes / 4);
        weights_.end_layer(l);
    }

    if (logits) {
        const int64_t rows = all_logits ? n : 1;
        const int64_t first = n - rows;
        rms_norm(f(s.x) + first * d.hidden, d.hidden, s.global_cache.device(globals.final_norm, d.hidden, st), d.rms_eps,
                 rows, d.hidden, f(s.normed), d.hidden, st);
        linear(s.global_cache, globals.lm_head, f(s.normed), d.hidden, rows, f(s.logits), d.vocab);
        SLUICE_CUDA_CHECK(cudaMemcpyAsync(logits, s.logits.data(), size_t(rows * d.vocab) * 4, cudaMemcpyDeviceToHost, st));
    }
    s.stream.synchronize();
    weights_.end_step();
    n_past_ += n;
}

}  // namespace sluice::cuda
