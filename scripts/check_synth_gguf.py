#!/usr/bin/env python3
"""Oracle check of `sluice synth -o X.gguf` (not CI: needs gguf-py, llama-cpp-python, numpy
and several GB of disk).

Writes a synthetic GGUF with the real DeepSeek-V3 dimensions and few layers, then
  (a) gguf-py reads it: alignment, layer order, and a few tensors dequantised (mean ~ 0,
      std ~ 1/sqrt(fan_in));
  (b) llama.cpp (llama-cpp-python) loads it, evaluates a prompt and greedy-decodes 4 tokens;
  (c) sluice runs the same prompt ids: logits cosine against llama.cpp per position and the
      same greedy tokens;
  (d) routing varies per token: sluice's prompt step needs many distinct experts (all tokens
      routed alike would need only top-k per MoE layer).
Usage: scripts/check_synth_gguf.py [--sluice build/engine/sluice] [--out /tmp/x.gguf]
       [--layers 2] [--dense-layers 1] [--experts 256] [--expert-type q4_k] [--keep]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default=os.environ.get("SLUICE_BIN", "build/engine/sluice"))
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "sluice_check_synth.gguf"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dense-layers", type=int, default=1)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--expert-type", default="q4_k")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer", default=os.path.join(os.environ.get("SLUICE_SHARED", "../shared"), "models",
                                                          "deepseek-v3-tokenizer"))
    ap.add_argument("--keep", action="store_true", help="keep the file (and reuse it if it exists)")
    args = ap.parse_args()

    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    if not (args.keep and os.path.exists(args.out)):
        cmd = [args.sluice, "synth", "-o", args.out, "--preset", "v3", "--layers", str(args.layers),
               "--dense-layers", str(args.dense_layers), "--experts", str(args.experts),
               "--expert-type", args.expert_type, "--seed", str(args.seed), "--tokenizer", args.tokenizer, "--quiet"]
        print("$", " ".join(cmd))
        subprocess.run(cmd, check=True)
    print(f"file: {args.out}, {os.path.getsize(args.out) / 1e9:.2f} GB")
    try:
        run_checks(args, check)
    finally:
        if not args.keep:
            os.remove(args.out)
    print("\n" + ("all checks passed" if not failures else f"{len(failures)} FAILED: {failures}"))
    sys.exit(1 if failures else 0)


def run_checks(args, check):
    import gguf
    from gguf import quants

    # (a) gguf-py
    r = gguf.GGUFReader(args.out)
    check(int(r.fields["general.alignment"].contents()) == 4096, "general.alignment = 4096")
    check(r.fields["general.architecture"].contents() == "deepseek2", "general.architecture = deepseek2")
    names = [t.name for t in r.tensors]
    layers = [int(n.split(".")[1]) for n in names if n.startswith("blk.")]
    check(names[0] == "token_embd.weight" and names[-1] == "output.weight" and layers == sorted(layers),
          "layer-ordered: token_embd, blk.0.. in order, output last")
    offsets = [t.data_offset for t in r.tensors]
    check(all(o % 4096 == 0 for o in offsets), "every tensor starts on a 4096 boundary")
    hidden = 7168
    for t in r.tensors:
        if not any(k in t.name for k in ("blk.0.attn_q_b", "blk.0.ffn_down.", "ffn_gate_inp", "exp_probs_b",
                                         "ffn_gate_exps", "ffn_down_exps", "attn_k_b", "output.weight")):
            continue
        rows = t.data.reshape(-1, t.data.shape[-1])
        rows = rows[: max(1, min(len(rows), 4096))]  # experts: the first rows are plenty
        v = quants.dequantize(rows, t.tensor_type).astype(np.float64).ravel()
        fan_in = int(t.shape[0])
        expect = 0.01 if "exp_probs_b" in t.name else 1 / np.sqrt(fan_in if "attn_k_b" not in t.name else 512)
        ratio = abs(v.mean()) / v.std()
        print(f"     {t.name:30s} {t.tensor_type.name:5s} {len(v):>9d} values  mean {v.mean():+.2e}  "
              f"std {v.std():.4e} (want {expect:.4e})  |mean|/std {ratio:.4f}")
        if len(v) >= 4096:
            check(np.isfinite(v).all() and ratio < 6 / np.sqrt(len(v)) + 1e-6 and abs(v.std() / expect - 1) < 0.05,
                  f"{t.name}: finite, zero-mean, std as 1/sqrt(fan_in)")

    # (b) llama.cpp
    import llama_cpp
    t0 = time.time()
    llm = llama_cpp.Llama(model_path=args.out, n_ctx=256, n_threads=args.threads, logits_all=True, verbose=False)
    print(f"     llama.cpp loaded in {time.time() - t0:.1f} s, n_vocab {llm.n_vocab()}")
    check(llm.n_vocab() == 129280, "llama.cpp loads it (vocab 129280)")
    import tokenizers
    hf = tokenizers.Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    texts = ["The capital of France is", "Hello, world! 12345 + 678 = 13023", "  spaces\ttabs\nnewlines",
             "深度求索是一家人工智能公司。", "<｜User｜>Hi<｜Assistant｜>", "naïve café — emoji 🙂 for (i=0;i<n;++i) {}",
             "<｜fim▁begin｜>def f(x):<｜fim▁hole｜><｜fim▁end｜>"]
    same = sum(llm.tokenize(t.encode(), add_bos=True, special=True) == [0] + hf.encode(t).ids for t in texts)
    check(same == len(texts), f"llama.cpp tokenises like HF tokenizers with the file's vocabulary ({same}/{len(texts)})")
    prompt = b"The quick brown fox jumps over the lazy dog. DeepSeek-V3 streams its experts"
    ids = llm.tokenize(prompt, add_bos=True)
    t0 = time.time()
    llm.eval(ids)
    ll_logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    greedy = []
    for _ in range(4):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(tok)
        llm.eval([tok])
    print(f"     llama.cpp: {len(ids)} prompt tokens + 4 in {time.time() - t0:.1f} s; greedy {greedy}; "
          f"logits std {ll_logits.std():.3f}")
    check(np.isfinite(ll_logits).all(), "llama.cpp logits finite")
    del llm

    # (c) sluice on the same ids, (d) its routing
    with tempfile.TemporaryDirectory() as tmp:
        logits_path = os.path.join(tmp, "logits.npy")
        stats_path = os.path.join(tmp, "stats.json")
        cmd = [args.sluice, "run", "-m", args.out, "--prompt-ids", ",".join(map(str, ids)), "-n", "4",
               "-t", str(args.threads), "--logits-out", logits_path, "--stats-json", stats_path,
               "--resident", "none", "--no-speculate"]
        print("$", " ".join(cmd))
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out = done.stdout + done.stderr
        line = [l for l in out.splitlines() if l.startswith("generated ids:")][0]
        sluice_greedy = [int(x) for x in line.split(":")[1].split(",")]
        sl_logits = np.load(logits_path).astype(np.float64)
        cos = (sl_logits * ll_logits).sum(1) / (np.linalg.norm(sl_logits, axis=1) * np.linalg.norm(ll_logits, axis=1))
        print(f"     sluice greedy {sluice_greedy}; logits cosine vs llama.cpp per position: "
              f"min {cos.min():.5f} mean {cos.mean():.5f}")
        agree = int((sl_logits.argmax(1) == ll_logits.argmax(1)).sum())
        print(f"     argmax agrees at {agree}/{len(ids)} prompt positions; greedy equal: {sluice_greedy == greedy} "
              "(random weights give near-flat logits, so one flipped expert choice in 256 can move the argmax)")
        # Both quantise activations to 8 bits and pick top-8 of 256 noisy router scores, so a
        # position may route one expert differently; the match is statistical, not exact.
        check(cos.mean() > 0.99 and cos.min() > 0.95, "sluice logits match llama.cpp (cosine mean > 0.99, min > 0.95)")
        first = open(stats_path).readline()
        if not first.strip():
            check(False, f"sluice --stats-json wrote per-step figures ({stats_path} is empty)")
            return
        step0 = json.loads(first)
        n_moe = args.layers - args.dense_layers
        same = 8 * n_moe
        print(f"     prompt step: {step0['tokens']} tokens, experts needed {step0['experts_needed']} over {n_moe} "
              f"MoE layer(s) (routing every token alike would need {same}; at most {args.experts * n_moe})")
        check(step0["experts_needed"] > 3 * same, "routing varies per token (many distinct experts in the prompt step)")


if __name__ == "__main__":
    main()
