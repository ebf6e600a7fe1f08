#include "engine/cuda/cuda_backend.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "core/error.hpp"
#include "kernels/cuda/attention.hpp"
#include "kernels/cuda/cublas_api.hpp"
#include "kernels/cuda/attention_decompressed.hpp"
#include "kernels/cuda/cuda_error.hpp"
#include "kernels/cuda/device.hpp"
#include "kernels/cuda/device_memory.hpp"
#include "kernels/cuda/gemm.hpp"
#include "kernels/cuda/gemv.hpp"
#include "kernels/cuda/ops.hpp"
#include "kernels/cuda/streams.hpp"

namespace sluice {

namespace {

using cuda::PinnedBuffer;

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(const CudaBackendOptions& options);
    ~CudaBackend() override;

    std::string name() const override { return device_name_; }
    bool uses_host_weights() const override { return false; }
    void reserve(const ModelLayout& layout, const ForwardShape& shape) override;

    float* alloc_floats(int64_t n) override { return static_cast<float*>(device_alloc(n * 4)); }
    int64_t* alloc_int64(int64_t n) override { return static_cast<int64_t*>(device_alloc(n * 8)); }
    int32_t* alloc_int32(int64_t n) override { return static_cast<int32_t*>(device_alloc(n * 4)); }
    float* alloc_cache_floats(int64_t n) override;
    int64_t allocated_bytes() const override { return int64_t(device_bytes_ + uint64_t(gemm_.reserved_bytes())); }
    size_t allocation_mark() const override { return allocations_.size(); }
    void release_to(size_t mark) override;
    void upload(void* dst, const void* host, size_t bytes) override;
    void download(void* host, const void* src, size_t bytes) override;
    void synchronize() override;

    void embed(const Matrix& embedding, const int32_t* tokens_host, int64_t n, float* x) override;
    void rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t n_rows, int64_t width,
                  float* out, int64_t out_stride) override {
        cuda::rms_norm(x, x_stride, w, eps, n_rows, width, out, out_stride, compute_);
    }
    void linear(const Matrix& w, const float* x, int64_t x_stride, int64_t n, float* y, int64_t y_stride) override;
    void add(float* x, const float* y, int64_t n) override { cuda::add_inplace(x, y, n, compute_); }
    void silu_mul(float* gate, const float* up, int64_t n) override { cuda::silu_mul(gate, up, n, gate, compute_); }
    void copy_rows(const float* src, int64_t src_stride, int64_t n_rows, int64_t width, float* dst,
                   int64_t dst_stride) override;
    void gather_rows(const float* rows, int64_t width, const int32_t* index, int64_t n_rows, float* out) override {
        cuda::gather_rows(rows, index, n_rows, width, out, compute_);
    }
    void combine_slots(const float* expert_out, const int32_t* token_slots, const float* slot_weight, int64_t n_tokens,
                       int per_token, int64_t width, float* out) override {
        cuda::combine_slots(expert_out, token_slots, slot_weight, n_tokens, per_token, width, out, compute_);
    }
    void rope(float* x, int64_t n_tokens, int n_heads, int64_t token_stride, int64_t head_stride, int dim,
              const int64_t* positions, const float* freq, float magnitude) override {
        cuda::rope_interleaved(x, n_tokens, n_heads, token_stride, head_stride, dim, positions, freq, magnitude,
                               compute_);
    }
    void route(const float* logits, const float* bias, const cpu::RouterConfig& config, int64_t n_tokens,
               int32_t* expert_ids_host, float* expert_weights_host) override;

    void begin_latent_products(const LayerWeights& w, int layer, bool decompressed) override;
    void absorb_queries(const LayerWeights& w, const float* q, int64_t n, float* q_latent) override;
    void attention_absorbed(int64_t count, const float* q_latent, const float* q_rope, const float* cache_latent,
                            const float* cache_rope, const int64_t* n_visible, float* out) override;
    void unabsorb(const LayerWeights& w, const float* attn_latent, int64_t n, float* heads) override;
    void expand_latents(const LayerWeights& w, const float* latent, int64_t m, float* kv) override;
    void decompressed_begin(int64_t count, float* out, float* running_max, float* running_sum) override {
        cuda::mla_decompressed_begin(decompressed_shape_, count, out, running_max, running_sum, compute_);
    }
    void decompressed_block(int64_t count, const float* q, const float* q_rope, const float* kv, const float* k_rope,
                            int64_t first, int64_t m, const int64_t* n_visible, float* out, float* running_max,
                            float* running_sum) override {
        cuda::mla_attention_decompressed_block(decompressed_shape_, count, q, q_rope, kv, k_rope, first, m, n_visible,
                                               out, running_max, running_sum, compute_);
    }
    void decompressed_end(int64_t count, float* out, const float* running_sum) override {
        cuda::mla_decompressed_end(decompressed_shape_, count, out, running_sum, compute_);
    }
    void output_logits(const Matrix& head, const float* normed, int64_t rows, float* logits_host) override;

    void* alloc_weight_bytes(size_t bytes) override { return device_alloc(int64_t(bytes)); }
    int create_event() override;
    void copy_weights_async(void* dst, const void* host, size_t bytes, int layer, int expert) override;
    void begin_span(const char* name, int layer, int expert) override;
    void end_span() override;
    void record_on_copy(int e) override { events_[size_t(e)].record(copy_); }
    void record_on_compute(int e) override { events_[size_t(e)].record(compute_); }
    void compute_waits_for(int e) override { events_[size_t(e)].wait_on(compute_); }
    void copy_waits_for(int e) override { events_[size_t(e)].wait_on(copy_); }
    void host_waits_for(int e) override { events_[size_t(e)].synchronize(); }

private:
    void* device_alloc(int64_t bytes);
    // --trace: spans timed by events on the device, resolved once they have completed.
    struct PendingSpan {
        Trace::Track track;
        const char* name;
        nlohmann::json args;
        size_t start, end;  // timing events
    };
    void on_trace_set() override;
    size_t timing_event();
    void resolve_spans();
    // Pinned host bytes for one upload, valid until the compute stream has run past it.
    std::byte* upload_staging(size_t bytes);
    void reset_uploads() { upload_used_ = 0; }

    CudaBackendOptions options_;
    std::string device_name_;
    cuda::Stream compute_;
    cuda::Stream copy_;
    cuda::Gemm gemm_;
    cublasHandle_t heads_blas_ = nullptr;  // batched fp32 products over heads, on compute_
    // Every allocation in order (cudaMalloc, or pinned host memory for a latent cache kept there),
    // freed last in, first out by release_to, or at destruction.
    struct Allocation {
        void* device = nullptr;
        size_t bytes = 0;     // device bytes
        PinnedBuffer host;
    };
    std::vector<Allocation> allocations_;
    std::deque<cuda::Event> events_;
    uint64_t device_bytes_ = 0;

    MlaShape mla_;
    cpu::AttentionShape absorbed_shape_;
    cpu::DecompressedAttentionShape decompressed_shape_;
    int64_t max_context_ = 0;
    int64_t hidden_ = 0;
    float* latent_f32_ = nullptr;        // the layer's kv_b (or k_b then v_b) in f32
    float* attention_scratch_ = nullptr; // the absorbed form's scores, attention_chunk_ tokens at a time
    int64_t attention_chunk_ = 0;
    float* logits_ = nullptr;            // [max_batch_tokens, vocab]
    int32_t* route_ids_ = nullptr;       // [max_batch_tokens, top_k]
    float* route_weights_ = nullptr;
    PinnedBuffer upload_arena_;
    size_t upload_used_ = 0;
    PinnedBuffer route_host_;            // ids then weights, copied back from the device

    std::deque<cuda::Event> timing_events_;
    std::vector<size_t> free_timing_events_;
    std::vector<PendingSpan> pending_spans_;
    std::optional<PendingSpan> open_span_;
    std::optional<cuda::Event> origin_;  // recorded when the trace was set, at host time origin_us_
    int64_t origin_us_ = 0;
};

// The absorbed form's score scratch is [tokens, heads, context]: a step's tokens go through it in
// chunks so that it stays this size (V3 at a 4096 context: 8 tokens x 128 heads x 4096 x 4 B = 16 MiB).
constexpr int64_t kAttentionScratchTokens = 8;

CudaBackend::CudaBackend(const CudaBackendOptions& options) : options_(options) {
    SLUICE_CUDA_CHECK(cudaSetDevice(options.device));
    cudaDeviceProp prop{};
    SLUICE_CUDA_CHECK(cudaGetDeviceProperties(&prop, options.device));
    device_name_ = std::string("cuda:") + std::to_string(options.device) + " (" + prop.name + ")";
    SLUICE_CUBLAS_CHECK(cuda::cublas().create(&heads_blas_));
    SLUICE_CUBLAS_CHECK(cuda::cublas().set_stream(heads_blas_, compute_));
}

CudaBackend::~CudaBackend() {
    // Queued work may still read our buffers or write host memory: let it finish first.
    cudaStreamSynchronize(copy_);
    cudaStreamSynchronize(compute_);
    if (trace_) {
        try {
            resolve_spans();
        } catch (...) {
        }
    }
    if (heads_blas_) cuda::cublas().destroy(heads_blas_);
    for (auto& a : allocations_)
        if (a.device) cudaFree(a.device);
}

void* CudaBackend::device_alloc(int64_t bytes) {
    const size_t size = size_t(std::max<int64_t>(bytes, 4) + 255) / 256 * 256;
    if (options_.memory_limit_bytes && device_bytes_ + uint64_t(gemm_.reserved_bytes()) + size > options_.memory_limit_bytes)
        fail(ErrorKind::out_of_memory,
             "device memory: {:.1f} MiB more would exceed the budget of {:.1f} MiB ({:.1f} MiB allocated); raise --vram",
             double(size) / (1 << 20), double(options_.memory_limit_bytes) / (1 << 20),
             double(device_bytes_ + uint64_t(gemm_.reserved_bytes())) / (1 << 20));
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, size);
    if (status != cudaSuccess) cuda::throw_allocation_error(int(status), size, "cudaMalloc");
    allocations_.push_back({p, size, {}});
    device_bytes_ += size;
    return p;
}

float* CudaBackend::alloc_cache_floats(int64_t n) {
    if (!options_.cache_in_host_memory) return alloc_floats(n);
    // Mapped pinned memory: the attention kernels read it over the bus (slower, but it fits). In
    // the LIFO with the device buffers: a forward pass's cache goes with it (before, each pass bench
    // ran left its cache pinned until the backend went, 575 MB per pass for V3 at 4096 positions).
    PinnedBuffer b(size_t(std::max<int64_t>(n, 1)) * 4);
    std::memset(b.data(), 0, b.size_bytes());
    void* device_view = nullptr;
    SLUICE_CUDA_CHECK(cudaHostGetDevicePointer(&device_view, b.data(), 0));
    allocations_.push_back({nullptr, 0, std::move(b)});
    return static_cast<float*>(device_view);
}

void CudaBackend::release_to(size_t mark) {
    copy_.synchronize();
    compute_.synchronize();
    while (allocations_.size() > mark) {
        if (allocations_.back().device) cudaFree(allocations_.back().device);
        device_bytes_ -= allocations_.back().bytes;
        allocations_.pop_back();  // frees a pinned host buffer
    }
}

void CudaBackend::reserve(const ModelLayout& d, const ForwardShape& s) {
    mla_ = MlaShape::from(d);
    absorbed_shape_ = {int(d.n_heads), int(d.kv_rank), int(d.rope_dim), d.softmax_scale};
    decompressed_shape_ = {int(d.n_heads), int(d.nope), int(d.rope_dim), int(d.v_dim), int(d.qk_head), d.softmax_scale};
    max_context_ = s.max_context;
    hidden_ = d.hidden;
    const int64_t n = s.max_batch_tokens;
    const int64_t k = std::max(d.router.top_k, 1);
    latent_f32_ = alloc_floats(d.n_heads * (d.nope + d.v_dim) * d.kv_rank);
    attention_chunk_ = std::min(n, kAttentionScratchTokens);
    attention_scratch_ = alloc_floats(cuda::attention_scratch_floats(absorbed_shape_, attention_chunk_, s.max_context));
    logits_ = alloc_floats(n * d.vocab);
    route_ids_ = alloc_int32(n * k);
    route_weights_ = alloc_floats(n * k);
    const int64_t scratch_floats = d.n_heads * (d.nope + d.v_dim) * d.kv_rank +
                                   cuda::attention_scratch_floats(absorbed_shape_, attention_chunk_, s.max_context) +
                                   n * d.vocab + 2 * n * k;
    if (uint64_t(scratch_floats) != cuda_backend_scratch_floats(d, s, options_, nullptr))
        fail(ErrorKind::internal, "CUDA backend scratch ({} floats) differs from cuda_backend_scratch_floats", scratch_floats);
    // The widest activation a linear() takes as GEMM input, and a tile of dequantised weights.
    const int64_t widest_in = std::max({d.hidden, d.q_lora, d.n_heads * d.v_dim, d.dense_inter, d.moe_inter,
                                        d.n_shared * d.moe_inter, d.kv_rank});
    // The GEMM scratch grows to the largest shape any forward on this backend asked for.
    const int64_t gemm_bytes = std::max<int64_t>(gemm_.reserved_bytes(), 2 * (options_.gemm_tile_elems + n * widest_in));
    if (options_.memory_limit_bytes && device_bytes_ + uint64_t(gemm_bytes) > options_.memory_limit_bytes)
        fail(ErrorKind::out_of_memory, "device memory: the GEMM scratch of {:.1f} MiB would exceed the budget of {:.1f} MiB; raise --vram",
             double(gemm_bytes) / (1 << 20), double(options_.memory_limit_bytes) / (1 << 20));
    gemm_.reserve(options_.gemm_tile_elems, n * widest_in);
    // Per step: positions and visible counts, the embeddings, per MoE layer the routed slots, the
    // logit rows; uploads past this wait for the compute stream and start over.
    const size_t per_step = size_t(16 * n + 4 * n + n * d.hidden * 4 + int64_t(d.n_layers) * 12 * n * k) + (64 << 10);
    upload_arena_ = PinnedBuffer(per_step);
    route_host_ = PinnedBuffer(size_t(n * k) * 8);
}

std::byte* CudaBackend::upload_staging(size_t bytes) {
    const size_t aligned = (bytes + 255) / 256 * 256;
    if (aligned > upload_arena_.size_bytes())
        fail(ErrorKind::internal, "upload of {} bytes is larger than the pinned upload arena ({} bytes)", bytes,
             upload_arena_.size_bytes());
    if (upload_used_ + aligned > upload_arena_.size_bytes()) {
        compute_.synchronize();  // everything queued has read its upload: start over
        reset_uploads();
    }
    std::byte* p = upload_arena_.as<std::byte>() + upload_used_;
    upload_used_ += aligned;
    return p;
}

void CudaBackend::upload(void* dst, const void* host, size_t bytes) {
    if (bytes == 0) return;
    std::byte* staging = upload_staging(bytes);
    std::memcpy(staging, host, bytes);
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(dst, staging, bytes, cudaMemcpyHostToDevice, compute_));
}

void CudaBackend::download(void* host, const void* src, size_t bytes) {
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, compute_));
    synchronize();
}

void CudaBackend::synchronize() {
    compute_.synchronize();
    reset_uploads();
    if (trace_) resolve_spans();
}

void CudaBackend::on_trace_set() {
    if (!trace_) return;
    // The device clock meets the host's at one event: it ran between the record call and the
    // return of the wait, so its host time is taken as the middle of that window.
    compute_.synchronize();
    origin_.emplace(true);
    const int64_t before = trace_->now_us();
    origin_->record(compute_);
    origin_->synchronize();
    const int64_t after = trace_->now_us();
    origin_us_ = (before + after) / 2;
    trace_->set_device_clock_uncertainty_us((after - before + 1) / 2);
}

size_t CudaBackend::timing_event() {
    if (!free_timing_events_.empty()) {
        const size_t i = free_timing_events_.back();
        free_timing_events_.pop_back();
        return i;
    }
    timing_events_.emplace_back(true);
    return timing_events_.size() - 1;
}

// Spans whose end has run become trace spans at device time (origin + elapsed).
void CudaBackend::resolve_spans() {
    size_t kept = 0;
    for (auto& p : pending_spans_) {
        if (cudaEventQuery(timing_events_[p.end].get()) != cudaSuccess) {
            cudaGetLastError();  // cudaErrorNotReady is not an error here
            pending_spans_[kept++] = std::move(p);
            continue;
        }
        const float start_ms = cuda::Event::elapsed_ms(*origin_, timing_events_[p.start]);
        const float end_ms = cuda::Event::elapsed_ms(*origin_, timing_events_[p.end]);
        trace_->add(p.track, p.name, origin_us_ + int64_t(double(start_ms) * 1000), origin_us_ + int64_t(double(end_ms) * 1000),
                    std::move(p.args));
        free_timing_events_.push_back(p.start);
        free_timing_events_.push_back(p.end);
    }
    pending_spans_.resize(kept);
}

void CudaBackend::begin_span(const char* name, int layer, int expert) {
    if (!trace_) return;
    nlohmann::json args = {{"layer", layer}};
    if (expert >= 0) args["expert"] = expert;
    const size_t start = timing_event();
    timing_events_[start].record(compute_);
    open_span_ = PendingSpan{Trace::Track::device, name, std::move(args), start, 0};
}

void CudaBackend::end_span() {
    if (!trace_ || !open_span_) return;
    open_span_->end = timing_event();
    timing_events_[open_span_->end].record(compute_);
    pending_spans_.push_back(std::move(*open_span_));
    open_span_.reset();
}

void CudaBackend::copy_weights_async(void* dst, const void* host, size_t bytes, int layer, int expert) {
    if (!trace_) {
        SLUICE_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, copy_));
        return;
    }
    const size_t start = timing_event(), end = timing_event();
    timing_events_[start].record(copy_);
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, copy_));
    timing_events_[end].record(copy_);
    nlohmann::json args = {{"layer", layer}, {"bytes", bytes},
                           {"host", fmt::format("{}", host)}, {"device", fmt::format("{}", dst)}};
    if (expert >= 0) args["expert"] = expert;
    pending_spans_.push_back({Trace::Track::copies, expert >= 0 ? "copy expert" : expert == -1 ? "copy dense" : "copy resident",
                              std::move(args), start, end});
}

int CudaBackend::create_event() {
    events_.emplace_back(false);
    return int(events_.size() - 1);
}

void CudaBackend::embed(const Matrix& embedding, const int32_t* tokens, int64_t n, float* x) {
    // The embedding stays a host view: a step needs n of its rows, dequantised here and uploaded.
    const size_t bytes = size_t(n * embedding.cols) * 4;
    auto* staging = reinterpret_cast<float*>(upload_staging(bytes));
    const auto& type = block_type(embedding.type);
    for (int64_t t = 0; t < n; ++t)
        type.dequantize_row(embedding.row(tokens[t]), staging + t * embedding.cols, embedding.cols);
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(x, staging, bytes, cudaMemcpyHostToDevice, compute_));
}

void CudaBackend::linear(const Matrix& w, const float* x, int64_t x_stride, int64_t n, float* y, int64_t y_stride) {
    if (n < options_.gemm_min_tokens) cuda::gemv_batched(w, x, x_stride, n, y, y_stride, compute_);
    else gemm_.run(w, x, x_stride, n, y, y_stride, compute_);
}

void CudaBackend::copy_rows(const float* src, int64_t src_stride, int64_t n_rows, int64_t width, float* dst,
                            int64_t dst_stride) {
    if (n_rows == 0) return;
    // Default: the destination may be a latent cache in mapped host memory (cache_in_host_memory).
    SLUICE_CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(dst_stride) * 4, src, size_t(src_stride) * 4, size_t(width) * 4,
                                        size_t(n_rows), cudaMemcpyDefault, compute_));
}

void CudaBackend::route(const float* logits, const float* bias, const cpu::RouterConfig& config, int64_t n_tokens,
                        int32_t* ids, float* weights) {
    const size_t count = size_t(n_tokens) * size_t(config.top_k);
    cuda::route(logits, bias, config, n_tokens, route_ids_, route_weights_, compute_);
    auto* host_ids = route_host_.as<int32_t>();
    auto* host_weights = reinterpret_cast<float*>(host_ids + count);
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(host_ids, route_ids_, count * 4, cudaMemcpyDeviceToHost, compute_));
    SLUICE_CUDA_CHECK(cudaMemcpyAsync(host_weights, route_weights_, count * 4, cudaMemcpyDeviceToHost, compute_));
    synchronize();
    std::memcpy(ids, host_ids, count * 4);
    std::memcpy(weights, host_weights, count * 4);
}

// Both forms use the layer's latent up-projection in f32: dequantised once per layer here, then
// products over heads as batched fp32 GEMMs (column-major views of row-major storage).
void CudaBackend::begin_latent_products(const LayerWeights& w, int, bool) {
    const MlaShape& m = mla_;
    if (w.kv_b.rows > 0) {
        cuda::dequantize_to_f32(w.kv_b, latent_f32_, compute_);
    } else {
        cuda::dequantize_to_f32(w.k_b, latent_f32_, compute_);
        cuda::dequantize_to_f32(w.v_b, latent_f32_ + m.n_heads * m.kv_rank * m.nope, compute_);
    }
}

void CudaBackend::absorb_queries(const LayerWeights& w, const float* q, int64_t n, float* q_latent) {
    const MlaShape& m = mla_;
    const float one = 1.0f, zero = 0.0f;
    const int64_t q_stride = m.n_heads * m.qk_head, latent_stride = m.n_heads * m.kv_rank;
    if (w.kv_b.rows > 0) {
        // kv_b rows per head [W_UK_h (nope) | W_UV_h (v)]: W_UK_h^T as a column-major [kv_rank, nope].
        SLUICE_CUBLAS_CHECK(cuda::cublas().sgemm_strided_batched(
            heads_blas_, CUBLAS_OP_N, CUBLAS_OP_N, int(m.kv_rank), int(n), int(m.nope), &one, latent_f32_,
            int(m.kv_rank), (m.nope + m.v_dim) * m.kv_rank, q, int(q_stride), m.qk_head, &zero, q_latent,
            int(latent_stride), m.kv_rank, int(m.n_heads)));
    } else {
        // k_b per head [kv_rank, nope] row-major holds W_UK_h^T.
        SLUICE_CUBLAS_CHECK(cuda::cublas().sgemm_strided_batched(
            heads_blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(m.kv_rank), int(n), int(m.nope), &one, latent_f32_, int(m.nope),
            m.kv_rank * m.nope, q, int(q_stride), m.qk_head, &zero, q_latent, int(latent_stride), m.kv_rank,
            int(m.n_heads)));
    }
}

void CudaBackend::attention_absorbed(int64_t count, const float* q_latent, const float* q_rope,
                                     const float* cache_latent, const float* cache_rope, const int64_t* n_visible,
                                     float* out) {
    const MlaShape& m = mla_;
    for (int64_t t0 = 0; t0 < count; t0 += attention_chunk_) {
        const int64_t c = std::min(attention_chunk_, count - t0);
        cuda::mla_attention_absorbed(absorbed_shape_, c, q_latent + t0 * m.n_heads * m.kv_rank,
                                     q_rope + t0 * m.n_heads * m.rope_dim, cache_latent, cache_rope, n_visible + t0,
                                     max_context_, out + t0 * m.n_heads * m.kv_rank, attention_scratch_, compute_);
    }
}

void CudaBackend::unabsorb(const LayerWeights& w, const float* attn_latent, int64_t n, float* heads) {
    const MlaShape& m = mla_;
    const float one = 1.0f, zero = 0.0f;
    const int64_t latent_stride = m.n_heads * m.kv_rank, heads_stride = m.n_heads * m.v_dim;
    // W_UV_h [v_dim, kv_rank] row-major, seen as column-major [kv_rank, v_dim] and transposed.
    const bool fused = w.kv_b.rows > 0;
    const float* w_uv = fused ? latent_f32_ + m.nope * m.kv_rank : latent_f32_ + m.n_heads * m.kv_rank * m.nope;
    const int64_t head_stride = fused ? (m.nope + m.v_dim) * m.kv_rank : m.v_dim * m.kv_rank;
    SLUICE_CUBLAS_CHECK(cuda::cublas().sgemm_strided_batched(heads_blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(m.v_dim), int(n),
                                                  int(m.kv_rank), &one, w_uv, int(m.kv_rank), head_stride, attn_latent,
                                                  int(latent_stride), m.kv_rank, &zero, heads, int(heads_stride),
                                                  m.v_dim, int(m.n_heads)));
}

void CudaBackend::expand_latents(const LayerWeights& w, const float* latent, int64_t count, float* kv) {
    const MlaShape& m = mla_;
    const float one = 1.0f, zero = 0.0f;
    const int64_t kv_head = m.nope + m.v_dim, kv_row = m.n_heads * kv_head;
    if (w.kv_b.rows > 0) {
        // kv [count, heads * (nope + v)] = latent . kv_b^T: one GEMM over all heads.
        const Matrix kv_b{DType::F32, m.n_heads * kv_head, m.kv_rank, latent_f32_, nullptr, 0};
        gemm_.run(kv_b, latent, m.kv_rank, count, kv, kv_row, compute_);
        return;
    }
    // k_nope_h [count, nope] = latent . k_b_h (k_b_h [kv_rank, nope] = W_UK_h^T), per head.
    SLUICE_CUBLAS_CHECK(cuda::cublas().sgemm_strided_batched(heads_blas_, CUBLAS_OP_N, CUBLAS_OP_N, int(m.nope), int(count),
                                                  int(m.kv_rank), &one, latent_f32_, int(m.nope), m.kv_rank * m.nope,
                                                  latent, int(m.kv_rank), 0, &zero, kv, int(kv_row), kv_head,
                                                  int(m.n_heads)));
    // v_h [count, v] = latent . v_b_h^T (v_b_h [v, kv_rank]).
    SLUICE_CUBLAS_CHECK(cuda::cublas().sgemm_strided_batched(
        heads_blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(m.v_dim), int(count), int(m.kv_rank), &one,
        latent_f32_ + m.n_heads * m.kv_rank * m.nope, int(m.kv_rank), m.v_dim * m.kv_rank, latent, int(m.kv_rank), 0,
        &zero, kv + m.nope, int(kv_row), kv_head, int(m.n_heads)));
}

void CudaBackend::output_logits(const Matrix& head, const float* normed, int64_t rows, float* logits_host) {
    linear(head, normed, head.cols, rows, logits_, head.rows);
    download(logits_host, logits_, size_t(rows * head.rows) * 4);
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
    const auto q = cuda::query_devices();
    if (!q.compiled) fail(ErrorKind::unsupported, "--device cuda: this sluice was built without CUDA (nvcc not found at build time)");
    if (q.devices.empty()) fail(ErrorKind::unsupported, "--device cuda: no usable CUDA device ({})", q.reason);
    if (options.device < 0 || options.device >= int(q.devices.size()))
        fail(ErrorKind::invalid_input, "--device cuda:{}: there are {} CUDA device(s)", options.device, q.devices.size());
    return std::make_unique<CudaBackend>(options);
}

}  // namespace sluice
