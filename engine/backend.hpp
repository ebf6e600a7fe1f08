// Where the forward pass's arithmetic runs. engine/deepseek_v3 is the model, written once; a
// Backend executes its steps on memory it owns: CPU kernels over host memory (cpu_backend), or
// CUDA kernels over device memory on a real GPU or the emulated device (engine/cuda). The idea is
// ggml's backend interface, cut to what DeepSeek-V3 needs: per-op entry points, memory owned by
// the backend, and asynchronous copies with events for device backends.
//
// Pointers to activations passed here are backend memory (alloc_*). Weight views (Matrix, norm
// vectors) come from the WeightProvider paired with the backend: host views for the CPU, device
// views for CUDA (engine/device_weights). Calls are executed in the order they are made; a device
// backend queues them on its compute stream and the host waits only where results come back
// (route, download, output_logits).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/model_layout.hpp"
#include "engine/model_weights.hpp"
#include "engine/trace.hpp"
#include "kernels/cpu/ops.hpp"

namespace sluice {

// The sizes a forward pass is built for: every buffer a backend allocates follows from these.
struct ForwardShape {
    int64_t max_batch_tokens = 128;  // tokens per step
    int64_t max_context = 4096;      // positions per sequence
    int n_sequences = 1;
    int64_t decompress_block = 256;  // cache positions the decompressed form expands at a time
    int64_t absorbed_piece = 128;    // tokens the absorbed form takes at a time
};

// How a layer's latent up-projection is stored (LayerWeights: kv_b, or k_b + v_b), and the
// shapes of the two attention forms. Derived from the layout once.
struct MlaShape {
    int64_t n_heads = 0, kv_rank = 0, nope = 0, rope_dim = 0, v_dim = 0, qk_head = 0;
    float scale = 1.0f;
    static MlaShape from(const ModelLayout& layout);
};

class Backend {
public:
    virtual ~Backend() = default;

    virtual std::string name() const = 0;
    // True when weight views are host memory used in place (the CPU); false when they must be
    // device views (a DeviceWeights provider in front of the host one).
    virtual bool uses_host_weights() const = 0;

    // Sizes the backend's own scratch for this model and shape, once, before any step.
    virtual void reserve(const ModelLayout& layout, const ForwardShape& shape) = 0;

    // ---- memory owned by the backend until it is destroyed (activations, caches, slots)
    virtual float* alloc_floats(int64_t n) = 0;
    virtual int64_t* alloc_int64(int64_t n) = 0;
    virtual int32_t* alloc_int32(int64_t n) = 0;
    // The MLA latent cache: device memory on a device backend, unless the plan put it in pinned
    // host memory that the device reads over the bus (cache_in_host_memory).
    virtual float* alloc_cache_floats(int64_t n) { return alloc_floats(n); }
    // Bytes of everything allocated so far (alloc_* and reserve's scratch).
    virtual int64_t allocated_bytes() const = 0;
    // Allocations go last in, first out: release_to(mark) frees everything allocated after
    // allocation_mark() returned `mark` (a forward pass's activations when it ends, while the
    // device weights allocated before it stay). Waits for queued work first.
    virtual size_t allocation_mark() const = 0;
    virtual void release_to(size_t mark) = 0;

    // Host bytes into backend memory, ordered with the calls around it; `host` may be reused as
    // soon as this returns.
    virtual void upload(void* dst, const void* host, size_t bytes) = 0;
    // Backend bytes to host memory once the work before it is done (waits).
    virtual void download(void* host, const void* src, size_t bytes) = 0;
    // Waits for everything queued so far.
    virtual void synchronize() = 0;

    // ---- ops, all f32 activations; strides in floats
    // x[t] = dequantised row tokens[t] of the embedding (a host view on every backend).
    virtual void embed(const Matrix& embedding, const int32_t* tokens_host, int64_t n, float* x) = 0;
    // out[r] = w * x[r] / rms(x[r]) for n_rows rows of `width`. out may alias x.
    virtual void rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t n_rows,
                          int64_t width, float* out, int64_t out_stride) = 0;
    // Y[t][r] = sum_c W[r][c] X[t][c] for t < n.
    virtual void linear(const Matrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
                        int64_t y_stride) = 0;
    virtual void add(float* x, const float* y, int64_t n) = 0;             // x += y
    virtual void silu_mul(float* gate, const float* up, int64_t n) = 0;    // gate = silu(gate) * up
    // dst rows = src rows (n_rows rows of `width`).
    virtual void copy_rows(const float* src, int64_t src_stride, int64_t n_rows, int64_t width, float* dst,
                           int64_t dst_stride) = 0;
    // out[r] = rows[index[r]] (index backend memory).
    virtual void gather_rows(const float* rows, int64_t width, const int32_t* index, int64_t n_rows, float* out) = 0;
    // out[t] = sum_j weight[s] * expert_out[s], s = token_slots[t * per_token + j], in j order
    // (a fixed order, whatever order the experts arrived in).
    virtual void combine_slots(const float* expert_out, const int32_t* token_slots, const float* slot_weight,
                               int64_t n_tokens, int per_token, int64_t width, float* out) = 0;
    // Rotates the first `dim` floats of n_heads vectors per token by token t's position.
    virtual void rope(float* x, int64_t n_tokens, int n_heads, int64_t token_stride, int64_t head_stride, int dim,
                      const int64_t* positions, const float* freq, float magnitude) = 0;
    // The MoE router: top-k ids and weights per token, returned to the host (waits).
    virtual void route(const float* logits, const float* bias, const cpu::RouterConfig& config, int64_t n_tokens,
                       int32_t* expert_ids_host, float* expert_weights_host) = 0;

    // ---- MLA (spec §2.7, §2.8). `w` is the layer's weights (kv_b, or k_b and v_b).
    // Called once per layer before any of the latent products below, with whether the
    // decompressed form will run (a backend may turn weights round or dequantise them here).
    virtual void begin_latent_products(const LayerWeights& w, int layer, bool decompressed) = 0;
    // q_latent[t][h] = W_UK_h^T q_nope[t][h]  (q rows [n, heads, qk_head], q_latent [n, heads, kv_rank]).
    virtual void absorb_queries(const LayerWeights& w, const float* q, int64_t n, float* q_latent) = 0;
    // The absorbed form over one sequence's latent cache for `count` queries (spec §2.8).
    virtual void attention_absorbed(int64_t count, const float* q_latent, const float* q_rope, const float* cache_latent,
                                    const float* cache_rope, const int64_t* n_visible, float* out) = 0;
    // heads[t][h] = W_UV_h attn_latent[t][h]  ([n, heads, kv_rank] -> [n, heads * v_dim]).
    virtual void unabsorb(const LayerWeights& w, const float* attn_latent, int64_t n, float* heads) = 0;
    // The decompressed form for `count` queries of one sequence, the cache expanded a block at a
    // time: kv [m, heads, nope + v] from latents [m, kv_rank], folded into out [count, heads, v]
    // by an online softmax (begin, blocks in ascending order from position 0, end).
    virtual void expand_latents(const LayerWeights& w, const float* latent, int64_t m, float* kv) = 0;
    virtual void decompressed_begin(int64_t count, float* out, float* running_max, float* running_sum) = 0;
    virtual void decompressed_block(int64_t count, const float* q, const float* q_rope, const float* kv,
                                    const float* k_rope, int64_t first, int64_t m, const int64_t* n_visible,
                                    float* out, float* running_max, float* running_sum) = 0;
    virtual void decompressed_end(int64_t count, float* out, const float* running_sum) = 0;

    // logits_host [rows, vocab] = head . normed (waits: the logits are on the host on return).
    virtual void output_logits(const Matrix& head, const float* normed, int64_t rows, float* logits_host) = 0;

    // ---- the timeline (--trace). The work queued between begin_span and end_span is one span:
    // on the CPU, timed as it runs on the compute track; on a device, timed when the device runs
    // it (the device track). Spans do not nest. Without a trace these cost a null check.
    void set_trace(Trace* trace);
    Trace* trace() const { return trace_; }
    virtual void begin_span(const char* name, int layer, int expert);
    virtual void end_span();

    // ---- weight copies (device backends; engine/device_weights uses these). Events are small
    // integers created once; a copy queue runs beside the compute queue.
    virtual void* alloc_weight_bytes(size_t bytes);  // device memory for weight slots
    virtual int create_event();
    // On the copy queue; `layer` / `expert` (-1: a dense segment, -2: resident weights) name the
    // segment on the timeline.
    virtual void copy_weights_async(void* dst, const void* host, size_t bytes, int layer, int expert);
    virtual void record_on_copy(int event);
    virtual void record_on_compute(int event);
    virtual void compute_waits_for(int event);  // the compute queue waits (the host does not)
    virtual void copy_waits_for(int event);     // the copy queue waits (the host does not)
    virtual void host_waits_for(int event);     // the host waits

protected:
    virtual void on_trace_set() {}
    Trace* trace_ = nullptr;

private:
    const char* span_name_ = nullptr;
    int span_layer_ = -1, span_expert_ = -1;
    int64_t span_start_us_ = 0;
};

}  // namespace sluice
