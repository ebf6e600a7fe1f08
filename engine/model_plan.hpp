// The model plan: for every layer, its dense segment (attention, norms, router, shared expert,
// or the dense MLP) and one segment per routed expert, each a list of planned tensors with the
// (file, offset, length) extent of their bytes; plus the global segment (embedding, final norm,
// output head). Built once from a checkpoint (HF safetensors or GGUF), it is all the streamer,
// the planner and `inspect` need to know about where the bytes are.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model_layout.hpp"
#include "engine/model_weights.hpp"
#include "engine/tensor_source.hpp"
#include "io/extent.hpp"

namespace sluice {

// What a planned tensor is to the forward pass.
enum class WeightRole : uint8_t {
    embed, final_norm, lm_head,
    attn_norm, q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, k_b, v_b, o, ffn_norm,
    dense_gate, dense_up, dense_down,
    router, router_bias,
    shared_gate, shared_up, shared_down,
    expert_gate, expert_up, expert_down,
};
const char* weight_role_name(WeightRole role);

struct PlannedTensor {
    WeightRole role;
    std::string name;        // as the checkpoint names it (with "[expert e]" for a slab of a 3-D tensor)
    DType type;
    int64_t rows = 0;        // 1 for vectors
    int64_t cols = 0;
    Extent extent;           // the bytes of this matrix / vector (one expert's slab for 3-D tensors)
    // FP8 block scales (HF official checkpoints): their own extent, or length 0.
    Extent scales;
    int64_t scale_row_offset = 0;
};

struct Segment {
    std::vector<PlannedTensor> tensors;
    uint64_t bytes() const;
    // Its extents in the order a staging buffer receives them: each tensor, then its scales.
    void extents(std::vector<Extent>& out) const;
};

struct LayerPlan {
    bool is_moe = false;
    // Small, always resident in every mode: the norms and router bias (as f32) and the router
    // matrix (as stored). The router stays out of the streamed dense segment so that layer L+1's
    // router can run on the state entering layer L (speculative prefetch) before L+1's dense
    // segment has landed, with --resident none too; it is 256 x 7168 F32 = 7.3 MB per V3 layer.
    Segment vectors;
    Segment dense;
    std::vector<Segment> experts;  // one per routed expert
};

struct ModelPlan {
    FileSet files;
    Segment global_vectors;        // final norm
    Segment globals;               // embedding, output head
    std::vector<LayerPlan> layers;

    uint64_t total_bytes() const;
};

// Whether any layer's dense segment holds a tensor of this role (e.g. k_b: the file splits kv_b).
bool plan_has_role(const ModelPlan& plan, WeightRole role);

// Plans a Hugging Face checkpoint (official names, spec §3.2), checking every tensor's
// presence, shape and type against the layout; errors name the checkpoint and the tensor.
ModelPlan plan_hf_model(const ModelLayout& layout, const TensorSource& source);

// Plans a llama.cpp `deepseek2` GGUF (spec §3.8): legacy attn_kv_b or MLA-era attn_k_b /
// attn_v_b, 3-D expert tensors sliced into one extent per expert (no copy), shared experts.
// Tensor shapes in `source` are PyTorch order (GGUF ne reversed).
ModelPlan plan_gguf_model(const ModelLayout& layout, const TensorSource& source);

// Builds the views of a segment's matrices whose bytes are at data[i] (and FP8 scales at
// scales[i], null when none). The pointers must stay valid while the views are used.
void bind_globals(const Segment& segment, const std::byte* const* data, const std::byte* const* scales,
                  ModelWeights& out);
void bind_dense(const Segment& segment, const std::byte* const* data, const std::byte* const* scales,
                LayerWeights& out);
void bind_expert(const Segment& segment, const std::byte* const* data, const std::byte* const* scales,
                 ExpertWeights& out);

// Reads every layer's vectors (norms, router bias) and the final norm, converted to f32, and
// every router matrix as stored, into `out.storage`, and points the weights at them. Done once
// at start in every mode.
void load_vectors(const ModelPlan& plan, const TensorSource& source, ModelWeights& out);

// Reads the global segment (embedding, head) into `out.storage` and binds it.
void load_globals(const ModelPlan& plan, const TensorSource& source, ModelWeights& out);
// Reads one layer's dense segment into `out.storage` (one buffer) and binds out.layers[layer].
void load_dense_segment(const ModelPlan& plan, int layer, const TensorSource& source, ModelWeights& out);
// Reads every layer's dense segment into `out.storage` and binds it (--resident dense).
void load_dense_resident(const ModelPlan& plan, const TensorSource& source, ModelWeights& out);

// The bytes load_globals / load_dense_resident / load_resident hold for a segment read into memory,
// and load_vectors for a layer's (or the final) vectors: what the memory planner counts.
uint64_t resident_segment_bytes(const Segment& segment);
uint64_t resident_vector_bytes(const Segment& vectors);

// Every segment read into memory (the fully resident mode): what `run` uses when the model fits.
ModelWeights load_resident(const ModelLayout& layout, const ModelPlan& plan, const TensorSource& source);

}  // namespace sluice
