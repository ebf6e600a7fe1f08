#!/usr/bin/env python3
"""Oracle fixture for the official FP8 checkpoint format (spec §3.3): tests/data/hf_small_v3 (a
transformers DeepseekV3 model with 256-wide rows, so weights span several 128x128 blocks) is
quantised to float8_e4m3fn with one F32 scale per 128x128 block by the rule of DeepSeek's release
(scale = amax / 448, stored as `weight_scale_inv`, weight = fp8 * scale_inv), with embeddings,
lm_head, norms and the router kept as they were (BF16 in the release, F32 here), plus a
quantization_config in config.json. transformers then runs on exactly the dequantised weights
(fp8 * scale_inv in fp32): those logits are what sluice must reproduce from the FP8 files.

  pip install torch transformers safetensors numpy
  python3 scripts/make_fp8_fixture.py     # writes tests/data/hf_small_v3_fp8/
"""
import json
import pathlib

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "data" / "hf_small_v3"
OUT = ROOT / "tests" / "data" / "hf_small_v3_fp8"
KEEP = ("embed_tokens", "lm_head", "norm", "layernorm", "mlp.gate.weight", "e_score_correction_bias")


def quantise(w):
    rows, cols = w.shape
    br, bc = (rows + 127) // 128, (cols + 127) // 128
    scale = torch.zeros(br, bc, dtype=torch.float32)
    q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s = block.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (block / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantise(q, scale):
    w = q.to(torch.float32)
    full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[: w.shape[0], : w.shape[1]]
    return w * full


def main():
    torch.set_grad_enabled(False)
    tensors = load_file(str(SRC / "model.safetensors"))
    out, dequantised = {}, {}
    for name, t in tensors.items():
        if t.ndim == 2 and not any(k in name for k in KEEP):
            q, s = quantise(t.to(torch.float32))
            out[name] = q
            out[name + "_scale_inv"] = s
            dequantised[name] = dequantise(q, s)
        else:
            out[name] = t
            dequantised[name] = t
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(out, str(OUT / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((SRC / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": [128, 128]}
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # transformers on the dequantised weights: rebuild the model from the same config.
    hf_cfg = {k: v for k, v in config.items() if k not in ("quantization_config", "architectures", "model_type",
                                                           "topk_method", "scoring_func", "moe_layer_freq",
                                                           "torch_dtype", "rope_scaling", "rope_theta")}
    rope = dict(config["rope_scaling"])
    rope.pop("type")
    hf_cfg["rope_parameters"] = dict(rope_type="yarn", rope_theta=config["rope_theta"], **rope)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**hf_cfg)).to(torch.float32).eval()
    model.config._attn_implementation = "eager"
    state = model.state_dict()
    for name in list(state.keys()):
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            n = state[name].shape[0]
            state[name] = torch.stack([torch.cat([dequantised[f"{prefix}{e}.gate_proj.weight"],
                                                  dequantised[f"{prefix}{e}.up_proj.weight"]]) for e in range(n)])
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            n = state[name].shape[0]
            state[name] = torch.stack([dequantised[f"{prefix}{e}.down_proj.weight"] for e in range(n)])
        elif name in dequantised:
            state[name] = dequantised[name].to(torch.float32)
    model.load_state_dict(state)
    prompt = json.loads((SRC / "expected.json").read_text())["prompt_ids"]
    logits = model(torch.tensor([prompt])).logits[0].numpy().astype(np.float32)
    np.save(OUT / "logits.npy", logits)
    bf16 = np.load(SRC / "logits.npy")
    cos = float((logits * bf16).sum() / np.linalg.norm(logits) / np.linalg.norm(bf16))
    (OUT / "expected.json").write_text(json.dumps({
        "prompt_ids": prompt,
        "note": "logits.npy: transformers on fp8 * weight_scale_inv (exact dequantisation)",
        "cosine_vs_unquantised_logits": cos}, indent=2) + "\n")
    print(f"wrote {OUT}; cosine of FP8 logits vs the unquantised model's: {cos:.6f}")


if __name__ == "__main__":
    main()
