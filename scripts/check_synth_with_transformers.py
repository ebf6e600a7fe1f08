#!/usr/bin/env python3
"""Outside check of `sluice synth`: loads a synthesized model directory with transformers'
DeepseekV3ForCausalLM / DeepseekV2ForCausalLM, requires that every checkpoint tensor is used and
none is missing (names and shapes are HF's), and prints hidden-state scales per layer so the
random weights can be seen to keep activations O(1). Not run by CI (needs torch, transformers).

usage: scripts/check_synth_with_transformers.py MODEL_DIR
"""
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def main(model_dir):
    config = AutoConfig.from_pretrained(model_dir)
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True)
    missing, unexpected = info["missing_keys"], info["unexpected_keys"]
    mismatched = info.get("mismatched_keys", [])
    print(f"transformers {transformers.__version__}: missing={len(missing)} unexpected={len(unexpected)} mismatched={len(mismatched)}")
    for key in list(missing)[:10] + list(unexpected)[:10] + list(mismatched)[:10]:
        print("  ", key)
    ids = torch.tensor([[0, 671, 6102, 294, 8760, 344]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for i, h in enumerate(out.hidden_states):
        print(f"hidden[{i}] rms {h.pow(2).mean().sqrt().item():.3f}")
    logits = out.logits[0, -1]
    print(f"logits std {logits.std().item():.3f}, argmax {logits.argmax().item()}")
    ok = not missing and not unexpected and not mismatched and torch.isfinite(out.logits).all()
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
