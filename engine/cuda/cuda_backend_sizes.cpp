// The CUDA backend's allocations as a formula, compiled in every build: `sluice plan` and the
// device planner size a GPU run on machines without one. CudaBackend::reserve allocates exactly
// these terms (checked there).
#include <algorithm>

#include "engine/cuda/cuda_backend.hpp"
#include "engine/deepseek_v3.hpp"

namespace sluice {

uint64_t cuda_backend_scratch_floats(const ModelLayout& d, const ForwardShape& s, const CudaBackendOptions& o,
                                     int64_t* gemm_bytes) {
    const int64_t n = s.max_batch_tokens;
    const int64_t k = std::max(d.router.top_k, 1);
    const int64_t heads_padded = (d.n_heads + 7) / 8 * 8;  // the absorbed kernel's groups of 8 heads
    const int64_t chunk = std::min<int64_t>(n, 8);
    const int64_t widest_in = std::max({d.hidden, d.q_lora, d.n_heads * d.v_dim, d.dense_inter, d.moe_inter,
                                        d.n_shared * d.moe_inter, d.kv_rank});
    if (gemm_bytes) *gemm_bytes = 2 * (o.gemm_tile_elems + n * widest_in);
    return uint64_t(d.n_heads * (d.nope + d.v_dim) * d.kv_rank  // the layer's latent projections in f32
                    + chunk * heads_padded * s.max_context      // absorbed scores
                    + n * d.vocab                               // logits
                    + 2 * n * k);                               // route ids and weights
}

uint64_t cuda_forward_device_bytes(const ModelLayout& d, const ForwardShape& s, const CudaBackendOptions& o,
                                   bool cache_on_device) {
    int64_t gemm_bytes = 0;
    const uint64_t floats = uint64_t(DeepseekForward::activation_floats(d, s)) + cuda_backend_scratch_floats(d, s, o, &gemm_bytes);
    const uint64_t cache = cache_on_device ? uint64_t(s.n_sequences) * uint64_t(d.n_layers) * uint64_t(s.max_context) *
                                                uint64_t(d.cache_width()) * 4
                                          : 0;
    // Each allocation is rounded up to 256 bytes: at most 40 buffers plus two per cache.
    const uint64_t rounding = 256 * (40 + 2 * uint64_t(s.n_sequences) * uint64_t(d.n_layers));
    return floats * 4 + cache + uint64_t(gemm_bytes) + rounding;
}

uint64_t cuda_forward_device_bytes(const ModelLayout& d, std::span<const ForwardShape> shapes, const CudaBackendOptions& o,
                                   bool cache_on_device) {
    uint64_t pass = 0;
    int64_t gemm = 0;
    for (const auto& s : shapes) {
        int64_t g = 0;
        cuda_backend_scratch_floats(d, s, o, &g);
        pass = std::max(pass, cuda_forward_device_bytes(d, s, o, cache_on_device) - uint64_t(g));
        gemm = std::max(gemm, g);
    }
    return pass + uint64_t(gemm);
}

}  // namespace sluice
