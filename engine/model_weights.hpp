// The weight set of one DeepSeek-V3-family model, by role, as the forward pass uses it. Every
// matrix is a view (kernels/matrix.hpp) into memory owned here (resident) or, when streaming,
// into a staging slot. Names follow spec §2: q_a, q_b, kv_a, k_b/v_b (per head), o, experts.
#pragma once

#include <cstdint>
#include <memory>
#include <deque>
#include <vector>

#include "core/aligned_buffer.hpp"
#include "kernels/matrix.hpp"

namespace sluice {

// The host bytes one segment's views point into, as one contiguous range (a staging buffer, a cache
// entry or a resident arena), so a device can take the segment in one copy and rebase the views.
struct SegmentBytes {
    const std::byte* data = nullptr;
    size_t size = 0;
    bool contains(const void* p) const {
        const auto* b = static_cast<const std::byte*>(p);
        return data && b >= data && b < data + size;
    }
};

struct ExpertWeights {
    Matrix gate;  // [moe_inter, hidden]
    Matrix up;    // [moe_inter, hidden]
    Matrix down;  // [hidden, moe_inter]
    SegmentBytes segment;  // where gate, up and down (and FP8 scales) are
};

struct LayerWeights {
    const float* attn_norm = nullptr;  // [hidden]
    // Query path: q_a -> q_a_norm -> q_b, or q directly when q_lora_rank is null (V2-Lite).
    Matrix q_a;                        // [q_lora, hidden]
    const float* q_a_norm = nullptr;   // [q_lora]
    Matrix q_b;                        // [heads * qk_head, q_lora]
    Matrix q;                          // [heads * qk_head, hidden]
    Matrix kv_a;                       // [kv_rank + rope, hidden]
    const float* kv_a_norm = nullptr;  // [kv_rank]
    // The latent up-projections, in one of two stored forms:
    //  - kv_b [heads * (nope + v_dim), kv_rank], per head rows [W_UK_h (nope) | W_UV_h (v_dim)]
    //    (HF checkpoints, legacy GGUF attn_kv_b): the absorb step q~_h = W_UK_h^T q_nope_h is a
    //    transposed product, done without rearranging the weights;
    //  - k_b [heads][kv_rank][nope] and v_b [heads][v_dim][kv_rank] (MLA-era GGUF attn_k_b /
    //    attn_v_b): q~_h = k_b_h . q_nope_h, o_h = v_b_h . c^_h.
    Matrix kv_b;                       // rows 0 when the file has k_b / v_b
    Matrix k_b;                        // rows = heads * kv_rank, cols = nope; rows 0 when kv_b
    Matrix v_b;                        // rows = heads * v_dim, cols = kv_rank; rows 0 when kv_b
    Matrix o;                          // [hidden, heads * v_dim]
    const float* ffn_norm = nullptr;   // [hidden]

    bool is_moe = false;
    ExpertWeights dense;               // dense MLP (intermediate_size) when !is_moe
    Matrix router;                     // [n_experts, hidden]
    const float* router_bias = nullptr;  // [n_experts] or null (V2)
    std::vector<ExpertWeights> experts;  // routed experts
    ExpertWeights shared;              // shared experts fused: [n_shared * moe_inter, ...]; rows 0 when none
    SegmentBytes dense_segment;        // where the dense segment's matrices are (not the vectors or router)
};

struct ModelWeights {
    Matrix embed;                      // [vocab, hidden]
    const float* final_norm = nullptr; // [hidden]
    Matrix lm_head;                    // [vocab, hidden]
    std::vector<LayerWeights> layers;

    // Everything above points into these.
    // A deque: references to earlier buffers stay valid while more are added.
    std::deque<AlignedBuffer> storage;
    int64_t resident_bytes = 0;        // what `storage` holds from the OS (AlignedBuffer::held)
};

}  // namespace sluice
