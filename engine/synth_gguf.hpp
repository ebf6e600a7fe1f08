// Writes a random-weight DeepSeek-V3-family model as one llama.cpp `deepseek2` GGUF (MLA-era
// attn_k_b / attn_v_b form, 3-D expert tensors, the real tokenizer in tokenizer.ggml.*), at
// disk speed: blocks are generated in their packed layout on the thread pool while the
// previous chunk is written, so models larger than RAM can be made on any machine.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.hpp"
#include "formats/model_config.hpp"
#include "kernels/block_type.hpp"
#include "kernels/random_blocks.hpp"

namespace sluice {

struct GgufSynthOptions {
    ModelConfig config;  // its n_layers, first_k_dense_replace, n_routed_experts decide the shape
    std::filesystem::path output_path;
    DType expert_type = DType::Q4_K;  // ffn_{gate,up,down}_exps
    DType dense_type = DType::Q4_K;   // attention, shared expert and dense-MLP matrices
    DType embed_type = DType::Q4_K;   // token_embd
    DType head_type = DType::Q6_K;    // output
    uint64_t seed = 0;
    // A directory with tokenizer.json (+ tokenizer_config.json for the chat template); its
    // vocabulary must fit config.vocab_size (padded with [PADn] unused tokens as llama.cpp does).
    std::filesystem::path tokenizer_dir;
    std::string model_name = "sluice-synth";
    int n_threads = 0;                     // 0: all CPUs
    uint64_t chunk_bytes = 64ull << 20;    // one generate / write unit (two are in memory)
    bool print_progress = false;           // bytes and GB/s to stderr about once a second
};

// One tensor of the file: GGUF name, type, ne (ne[0] fastest) and how its values are drawn.
struct GgufSynthTensor {
    std::string name;
    DType type = DType::F32;
    std::vector<int64_t> ne;
    RandomFill fill = RandomFill::gaussian_like;
    double std = 0;  // of the values; 1/sqrt(fan_in) for projections (as synth_weight_std)
    uint64_t size_bytes() const;
};

// The tensors in file order: token_embd, blk.0.* .. blk.N-1.*, output_norm, output. Inside a
// layer the attention and other dense tensors come first, the routed experts last. Norms are
// F32 ones; the router (ffn_gate_inp) and exp_probs_b F32 as llama.cpp writes them. attn_k_b
// (rows of qk_nope_head_dim, 128 at V3 size, too short for K-quants) takes dense_type when its
// rows fit, else Q8_0, else F16 - llama.cpp's own fallback. Any other tensor whose rows do not
// fit its type's blocks, or a type with no random generator, is refused (invalid_input) naming
// the tensor, type and row length.
std::vector<GgufSynthTensor> synth_gguf_tensors(const GgufSynthOptions& options);

// The deepseek2 hyperparameter keys for `config` (the set llama.cpp's converter writes).
std::vector<gguf::KeyValue> synth_gguf_hparams(const ModelConfig& config);

// tokenizer.ggml.* keys from an HF tokenizer directory, as llama.cpp's converter builds them:
// ids 0..vocab_size-1, added tokens CONTROL when special or <｜...｜>-shaped, USER_DEFINED
// otherwise, gaps [PADn] UNUSED; merges as "a b"; pre "deepseek-v3"; chat template if present.
std::vector<gguf::KeyValue> gguf_tokenizer_metadata(const std::filesystem::path& tokenizer_dir, int64_t vocab_size);

struct GgufSynthSummary {
    size_t n_tensors = 0;
    uint64_t n_parameters = 0;
    uint64_t file_bytes = 0;
    double seconds = 0;
};

// Writes options.output_path (through `<path>.partial`, renamed when complete).
GgufSynthSummary write_synthetic_gguf(const GgufSynthOptions& options);

// "q4_k" / "Q4_K" / "bf16" ... -> DType; invalid_input naming the accepted list otherwise.
DType parse_synth_dtype(std::string_view name);

// A preset's config (synth_preset) shaped as `sluice synth -o X.gguf` shapes it: no MTP module;
// `layers` main layers; `dense_layers` leading dense ones (default min(preset's, layers - 1), so
// one MoE layer remains); `experts` routed experts per MoE layer, top-k clamped to them and the
// expert grouping kept only while it still divides them (else no groups). `sluice plan --preset`
// sizes the same shapes without a file.
ModelConfig synth_gguf_config(std::string_view preset, std::optional<int> layers, std::optional<int> dense_layers,
                              std::optional<int64_t> experts);

}  // namespace sluice
