#include "engine/gguf_source.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.hpp"
#include "core/page_cache.hpp"
#include "formats/gguf_deepseek2.hpp"

namespace sluice {

GgufSource::GgufSource(gguf::GgufModel model) : model_(std::move(model)) {
    for (const auto& t : model_.tensors()) {
        SourceTensor s{t.name, t.type, {}, t.extent};
        for (int d = int(t.n_dims) - 1; d >= 0; --d) s.shape.push_back(t.ne[size_t(d)]);  // PyTorch order
        tensors_.emplace(t.name, std::move(s));
    }
    for (const auto& p : model_.files().paths) {
        const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            for (int f : fds_) ::close(f);
            fail(ErrorKind::io, "{}: cannot open: {}", p, std::strerror(err));
        }
        fds_.push_back(fd);
    }
}

GgufSource::~GgufSource() {
    for (int fd : fds_) ::close(fd);
}

const SourceTensor* GgufSource::find(std::string_view name) const {
    const auto it = tensors_.find(std::string(name));
    return it == tensors_.end() ? nullptr : &it->second;
}

void GgufSource::read(const SourceTensor& tensor, std::span<std::byte> out) const {
    const Extent& e = tensor.extent;
    const std::string& path = model_.files().paths.at(e.file_index);
    uint64_t done = 0;
    while (done < e.length) {
        const ssize_t r = ::pread(fds_[e.file_index], out.data() + done, e.length - done, off_t(e.offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            fail(ErrorKind::io, "{}: tensor '{}': read of {} bytes at offset {}: {}", path, tensor.name, e.length,
                 e.offset, std::strerror(errno));
        if (r == 0)
            fail(ErrorKind::io, "{}: tensor '{}': file ends at offset {} inside the tensor (truncated?)", path,
                 tensor.name, e.offset + done);
        done += uint64_t(r);
    }
    drop_cached(fds_[e.file_index], e.offset, e.length);
}

ModelConfig model_config_from_gguf(const gguf::GgufModel& model) {
    const auto md = model.metadata();
    const std::string path = model.files().paths.front();
    const auto hp = gguf::read_deepseek2_hparams(md);
    ModelConfig c;
    c.model_type = "deepseek_v3";
    c.architectures = {"gguf:deepseek2"};
    c.hidden_size = hp.embedding_length;
    c.n_layers = int(hp.block_count);
    c.first_k_dense_replace = int(hp.leading_dense_block_count);
    c.moe_layer_freq = 1;
    c.intermediate_size = hp.feed_forward_length;
    c.moe_intermediate_size = hp.expert_feed_forward_length;
    c.n_routed_experts = hp.expert_count;
    c.n_shared_experts = hp.expert_shared_count;
    c.num_experts_per_tok = hp.expert_used_count;
    c.n_group = hp.expert_group_count;
    c.topk_group = hp.expert_group_used_count;
    c.norm_topk_prob = hp.expert_weights_norm;
    c.routed_scaling_factor = hp.expert_weights_scale;
    const bool sigmoid = hp.expert_gating_func == gguf::ExpertGating::sigmoid;
    c.scoring_func = sigmoid ? ScoringFunc::sigmoid : ScoringFunc::softmax;
    c.topk_method = sigmoid ? TopkMethod::noaux_tc
                            : (c.n_group > 1 ? TopkMethod::group_limited_greedy : TopkMethod::greedy);
    if (!sigmoid) c.model_type = "deepseek_v2";
    c.n_heads = hp.head_count;
    c.q_lora_rank = hp.q_lora_rank ? std::optional<int64_t>(*hp.q_lora_rank) : std::nullopt;
    c.kv_lora_rank = hp.kv_lora_rank;
    c.qk_rope_head_dim = hp.rope_dimension_count;
    // MLA-era files store the logical head dims as *_mla; legacy files in key/value_length.
    const int64_t key_length = hp.key_length_mla ? *hp.key_length_mla : hp.key_length;
    c.qk_nope_head_dim = key_length - c.qk_rope_head_dim;
    c.v_head_dim = hp.value_length_mla ? *hp.value_length_mla : hp.value_length;
    c.rope_theta = hp.rope_freq_base;
    if (hp.rope_scaling_type == "yarn" && hp.rope_scaling_factor > 1) {
        YarnRopeScaling y;
        y.factor = hp.rope_scaling_factor;
        y.original_max_position_embeddings = hp.rope_scaling_original_context_length;
        // yarn_log_multiplier = 0.1 * mscale_all_dim (spec §3.7); the released configs have
        // mscale == mscale_all_dim. Beta values are not stored: llama.cpp's defaults 32 / 1.
        y.mscale_all_dim = hp.rope_yarn_log_multiplier / 0.1;
        y.mscale = y.mscale_all_dim;
        c.rope_scaling = y;
    } else if (!hp.rope_scaling_type.empty() && hp.rope_scaling_type != "none" && hp.rope_scaling_type != "yarn") {
        fail(ErrorKind::unsupported, "{}: rope.scaling.type '{}' (only yarn)", path, hp.rope_scaling_type);
    }
    c.max_position_embeddings = hp.context_length;
    c.rms_norm_eps = hp.rms_norm_eps;
    c.num_nextn_predict_layers = 0;
    const auto* embed = model.find_tensor("token_embd.weight");
    if (!embed) fail(ErrorKind::invalid_input, "{}: missing tensor 'token_embd.weight'", path);
    c.vocab_size = embed->ne[1];
    c.tie_word_embeddings = model.find_tensor("output.weight") == nullptr;
    if (md.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = md.get_i64("tokenizer.ggml.bos_token_id");
    if (md.has("tokenizer.ggml.eos_token_id")) c.eos_token_ids = {md.get_i64("tokenizer.ggml.eos_token_id")};
    c.torch_dtype = "gguf";
    c.validate(path);
    return c;
}

Tokenizer tokenizer_from_gguf(const gguf::GgufModel& model) {
    const auto md = model.metadata();
    const std::string path = model.files().paths.front();
    const std::string kind = md.has("tokenizer.ggml.model") ? md.get_string("tokenizer.ggml.model") : "";
    if (kind != "gpt2")
        fail(ErrorKind::unsupported, "{}: tokenizer.ggml.model '{}' (only byte-level BPE 'gpt2')", path, kind);
    TokenizerParts parts;
    parts.tokens = md.get_string_array("tokenizer.ggml.tokens");
    if (md.has("tokenizer.ggml.token_type")) {
        const auto types = md.get_i64_array("tokenizer.ggml.token_type");
        for (int64_t t : types) parts.types.push_back(TokenType(uint8_t(t)));
    }
    for (const auto& m : md.get_string_array("tokenizer.ggml.merges")) {
        const auto space = m.find(' ');
        if (space == std::string::npos) fail(ErrorKind::invalid_input, "{}: merge '{}' has no space", path, m);
        parts.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
    }
    if (md.has("tokenizer.ggml.bos_token_id")) parts.bos_id = int32_t(md.get_i64("tokenizer.ggml.bos_token_id"));
    if (md.has("tokenizer.ggml.eos_token_id")) parts.eos_id = int32_t(md.get_i64("tokenizer.ggml.eos_token_id"));
    if (md.has("tokenizer.ggml.add_bos_token")) parts.add_bos = md.get_bool("tokenizer.ggml.add_bos_token");
    const std::string pre = md.has("tokenizer.ggml.pre") ? md.get_string("tokenizer.ggml.pre") : "";
    return Tokenizer::from_parts(std::move(parts), pre, path);
}

}  // namespace sluice
