#!/usr/bin/env python3
"""Oracle fixtures for the forward pass: tiny random DeepSeek-V3/V2 models built with Hugging Face
transformers' own classes, saved as HF checkpoints (config.json + model.safetensors, experts as
per-expert tensors like the official release), plus transformers' logits for a fixed prompt and
its greedy continuation.

  pip install torch transformers safetensors numpy
  python3 scripts/make_hf_fixtures.py            # writes tests/data/hf_tiny_*/

Each directory gets: config.json, model.safetensors, expected.json (prompt ids, greedy ids, the
smallest top-1/top-2 logit gap seen while choosing them), logits.npy [positions, vocab] float32.
"""
import json
import math
import pathlib
import sys

import numpy as np
import torch
from safetensors.torch import save_file
import transformers
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
PROMPT = [0, 17, 250, 3, 99, 180, 42, 42, 7, 311, 5, 128, 64, 200, 13, 290]
N_GREEDY = 32

CONFIGS = {
    # V3-like: q_lora, one dense layer, 4 groups keep 2, YaRN, sigmoid + bias (noaux_tc).
    "hf_tiny_v3": dict(cls="v3", cfg=dict(
        vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=4, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=2560,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0,
                             original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0,
                             mscale=1.0, mscale_all_dim=1.0),
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)),
    # V2-Lite-like: no q_lora (q_proj), softmax routing, greedy top-k, 2 shared experts, mscale 0.707.
    "hf_tiny_v2lite": dict(cls="v2", cfg=dict(
        vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
        num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, n_shared_experts=2,
        num_experts_per_tok=3, n_group=1, topk_group=1, topk_method="greedy", norm_topk_prob=False,
        routed_scaling_factor=1.0, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=2560,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0,
                             original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0,
                             mscale=0.707, mscale_all_dim=0.707),
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)),
    # Several shared experts, two dense layers, no group limit (n_group 1), plain RoPE (no YaRN),
    # non-default theta, no renormalisation of the top-k weights.
    "hf_tiny_v3_shared3": dict(cls="v3", cfg=dict(
        vocab_size=320, hidden_size=48, intermediate_size=80, moe_intermediate_size=16,
        num_hidden_layers=4, first_k_dense_replace=2, n_routed_experts=12, n_shared_experts=3,
        num_experts_per_tok=2, n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.5,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=24, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=12, max_position_embeddings=4096,
        rope_parameters=dict(rope_type="default", rope_theta=50000.0),
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)),
}


def randomise(model, seed):
    """transformers initialises with std 0.02 and a zero router bias, which makes every logit ~0
    and every routing decision a near-tie. Re-draw every weight so activations are O(1) and the
    test can tell a wrong kernel from a right one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))


def official_state_dict(model, cfg):
    """transformers keeps experts fused as 3-D tensors; the released checkpoints store one
    [out, in] matrix per expert (spec §3.2). Write that layout, which is what users hold."""
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).contiguous()
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :inter].contiguous()
                out[f"{prefix}{e}.up_proj.weight"] = t[e, inter:].contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = t[e].contiguous()
        elif "rotary_emb" in name:
            continue
        else:
            out[name] = t
    return out


def hf_config_json(cls, cfg):
    """config.json as the released checkpoints spell it (rope_scaling, not rope_parameters)."""
    c = dict(cfg)
    rope = c.pop("rope_parameters")
    c["rope_theta"] = rope["rope_theta"]
    if rope["rope_type"] == "yarn":
        c["rope_scaling"] = {k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta")}
        c["rope_scaling"]["type"] = "yarn"
    else:
        c["rope_scaling"] = None
    if cls == "v3":
        c.update(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", topk_method="noaux_tc",
                 scoring_func="sigmoid", moe_layer_freq=1, hidden_act="silu", attention_bias=False,
                 num_nextn_predict_layers=0, torch_dtype="float32")
    else:
        c.update(architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", scoring_func="softmax",
                 moe_layer_freq=1, hidden_act="silu", attention_bias=False, torch_dtype="float32")
    return c


def main():
    torch.set_grad_enabled(False)
    for i, (name, spec) in enumerate(CONFIGS.items()):
        cls = spec["cls"]
        cfg = dict(spec["cfg"])
        if cls == "v3":
            config = DeepseekV3Config(**cfg)
            model = DeepseekV3ForCausalLM(config)
        else:
            config = DeepseekV2Config(**cfg)
            model = DeepseekV2ForCausalLM(config)
        config._attn_implementation = "eager"
        model = model.to(torch.float32).eval()
        randomise(model, seed=1234 + i)

        ids = torch.tensor([PROMPT])
        logits = model(ids).logits[0].to(torch.float32).numpy()

        # Greedy continuation, recomputed from scratch every step (no cache): the reference
        # for our cached decode.
        seq = list(PROMPT)
        greedy, min_gap = [], float("inf")
        for _ in range(N_GREEDY):
            last = model(torch.tensor([seq])).logits[0, -1].to(torch.float64)
            top2 = torch.topk(last, 2)
            min_gap = min(min_gap, float(top2.values[0] - top2.values[1]))
            nxt = int(top2.indices[0])
            greedy.append(nxt)
            seq.append(nxt)

        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        save_file(official_state_dict(model, cfg), str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(hf_config_json(cls, cfg), indent=2) + "\n")
        np.save(d / "logits.npy", logits.astype(np.float32))
        (d / "expected.json").write_text(json.dumps({
            "prompt_ids": PROMPT,
            "greedy_ids": greedy,
            "greedy_min_top2_gap": min_gap,
            "max_abs_logit": float(np.abs(logits).max()),
            "generator": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                         f"{type(model).__name__}, float32, eager attention",
        }, indent=2) + "\n")
        print(f"{name}: logits {logits.shape}, max|logit| {np.abs(logits).max():.3f}, "
              f"greedy min gap {min_gap:.4f}, files in {d}")


if __name__ == "__main__":
    sys.exit(main())
