#!/usr/bin/env python3
"""llama.cpp as an outside oracle: convert the tiny transformers DeepSeek models with llama.cpp's
own converter and quantiser, run them with llama.cpp, and commit the GGUFs, llama.cpp's logits and
greedy tokens, and a manifest (per-tensor types, sizes, agreement with transformers).

  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" pip install llama-cpp-python   # builds llama.cpp
  pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/lcp && tar xzf ... -C /tmp/lcp
  python3 scripts/make_llamacpp_fixtures.py --llama-cpp-src /tmp/lcp/llama_cpp_python-X/vendor/llama.cpp
  python3 scripts/make_llamacpp_fixtures.py --small-only   # just tests/data/hf_small_v3 (incl. the
                                                           # uncommitted model.safetensors)

Inputs: tests/data/hf_tiny_v3, hf_tiny_v2lite, hf_tiny_v3_shared3 (scripts/make_hf_fixtures.py),
plus tests/data/hf_small_v3, which this script builds itself (see make_small_model) because with
hidden 64 llama.cpp cannot use K-quants at all (K-quant rows must be multiples of 256): every
"Q4_K_M" tensor of the tiny models falls back to Q5_0/Q5_1/Q8_0/F16, so the small model is the one
where Q4_K/Q6_K/Q2_K/Q3_K blocks really appear.

Outputs in tests/data/llamacpp/: <model>.<type>.gguf, <model>.<type>.logits.npy (float32
[prompt positions, vocab], llama.cpp's logits for every prompt position), manifest.json
(per file: tensor types, sizes, greedy ids, cosine / max |delta| vs transformers' logits and vs
transformers run on the file's own dequantised weights, <model>.<type>.hf_dequant_logits.npy), and
tokenizer/ (the stand-in tokenizer the converter requires, see write_tokenizer), and
<model>.<type>.greedy_logits.npy (float32 [16, vocab]: the logits of each step of llama.cpp's
free-running greedy run from the prompt choose_greedy_prompt picks, by llama.cpp's top-2 gaps alone).
llama.cpp runs with an F32 K/V cache and no flash attention (LLAMA_CONTEXT says why).
"""
import argparse
import hashlib
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
OUT = DATA / "llamacpp"
N_GREEDY = 16
TINY_MODELS = ["hf_tiny_v3", "hf_tiny_v2lite", "hf_tiny_v3_shared3"]
SMALL_MODEL = "hf_small_v3"

# llama.cpp's llama_ftype values (include/llama.h).
FTYPE = {"Q4_K_M": 15, "Q2_K": 10}
# Which files are committed. The small model's F16/Q8_0 files (3-4 MB) are produced and measured
# but kept out of the repository to stay inside the size budget; its K-quant files are the point.
COMMIT = {m: ["F16", "Q8_0", "Q4_K_M", "Q2_K"] for m in TINY_MODELS}
COMMIT[SMALL_MODEL] = ["Q4_K_M", "Q2_K"]
# Hidden 48 is not a multiple of 32, so the converter's Q8_0 and the quantiser's Q4_K_M/Q2_K all fall
# back to F16 for every matrix: those three files are byte-identical to F16 and not committed twice.
COMMIT["hf_tiny_v3_shared3"] = ["F16"]
# llama.cpp (src/models/deepseek2.cpp) reads q_lora_rank unless n_layer is 26/27 (or 48 with vocab
# 128256): it recognises DeepSeek-V2-Lite by its layer count, not by the missing key, so our 3-layer
# no-q_lora model converts but does not load, and the quantiser fails the same way. The converter's
# F16 file is kept as a GGUF-reader fixture for the attn_q (no q_lora) form.
COMMIT["hf_tiny_v2lite"] = ["F16"]
LOAD_FAILURE_NOTES = {"hf_tiny_v2lite": "llama.cpp limitation: deepseek2 loader requires attention.q_lora_rank "
                      "unless n_layer is 26/27 (V2-Lite detected by layer count); this 3-layer model has no q_lora"}

# A V3-like model whose matrix rows (the dimension llama.cpp quantises along) are 256 or 512 wide,
# so K-quants apply to the experts, the dense FFN, q_a/kv_a/o and attn_v_b. Still small: ~1.6 M
# parameters. Two layers: one dense, one MoE (4 routed experts, 2 groups keep 1, sigmoid + bias).
SMALL_CFG = dict(
    vocab_size=320, hidden_size=256, intermediate_size=256, moe_intermediate_size=256,
    num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=4, n_shared_experts=1,
    num_experts_per_tok=2, n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
    num_attention_heads=2, num_key_value_heads=2, q_lora_rank=128, kv_lora_rank=256,
    qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=128, max_position_embeddings=2560,
    rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0,
                         original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0,
                         mscale=1.0, mscale_all_dim=1.0),
    rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)


def make_small_model():
    """Build tests/data/hf_small_v3 the way scripts/make_hf_fixtures.py builds the tiny ones
    (transformers classes, re-randomised weights, per-expert tensor names), reusing its functions.
    Weights are rounded to F16-representable values first, so transformers' logits are the exact
    oracle for an F16 GGUF of this model too. model.safetensors (~6 MB F32) is not committed:
    this function regenerates it deterministically (seeded), the committed GGUFs carry the weights."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_hf_fixtures as hf

    torch.set_grad_enabled(False)
    config = DeepseekV3Config(**SMALL_CFG)
    model = DeepseekV3ForCausalLM(config)
    config._attn_implementation = "eager"
    model = model.to(torch.float32).eval()
    hf.randomise(model, seed=4242)
    for p in model.parameters():
        p.copy_(p.half().float())
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(b.half().float())

    prompt = hf.PROMPT
    logits = model(torch.tensor([prompt])).logits[0].to(torch.float32).numpy()
    seq, greedy, min_gap = list(prompt), [], float("inf")
    for _ in range(hf.N_GREEDY):
        last = model(torch.tensor([seq])).logits[0, -1].to(torch.float64)
        top2 = torch.topk(last, 2)
        min_gap = min(min_gap, float(top2.values[0] - top2.values[1]))
        greedy.append(int(top2.indices[0]))
        seq.append(greedy[-1])

    d = DATA / SMALL_MODEL
    d.mkdir(parents=True, exist_ok=True)
    save_file(hf.official_state_dict(model, SMALL_CFG), str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(hf.hf_config_json("v3", SMALL_CFG), indent=2) + "\n")
    np.save(d / "logits.npy", logits.astype(np.float32))
    (d / "expected.json").write_text(json.dumps({
        "prompt_ids": prompt,
        "greedy_ids": greedy,
        "greedy_min_top2_gap": min_gap,
        "max_abs_logit": float(np.abs(logits).max()),
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                     f"DeepseekV3ForCausalLM, float32 (weights rounded to F16 values), eager attention; "
                     f"scripts/make_llamacpp_fixtures.py make_small_model, seed 4242",
    }, indent=2) + "\n")
    print(f"{SMALL_MODEL}: logits {logits.shape}, max|logit| {np.abs(logits).max():.3f}, greedy min gap {min_gap:.4f}")


def write_tokenizer(directory: pathlib.Path):
    """llama.cpp's converter refuses a model without a tokenizer (it writes the vocabulary into the
    GGUF, which is what makes a GGUF self-contained). The test models have none: their prompts are
    token ids. This writes a minimal valid byte-level BPE tokenizer with exactly vocab_size = 320
    tokens (2 specials at ids 0/1 = bos/eos as in config.json, 256 byte tokens, 62 merges) using
    the `tokenizers` package. It does not affect logits; it only lets the converter run and gives
    the GGUF a real, loadable gpt2-style vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog. " * 4,
            "streaming layers from disk through a mixture of experts, one token at a time. " * 4,
            "0123456789 hello world, this is a tiny tokenizer for test models only. " * 4]
    tok.train_from_iterator(text, trainer)
    if tok.get_vocab_size() != 320:
        raise SystemExit(f"stand-in tokenizer has {tok.get_vocab_size()} tokens, need 320")
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 2560,
    }, indent=2) + "\n")


# The converter identifies the pre-tokenizer by hashing the token ids a long test string encodes
# to; our stand-in vocabulary cannot reproduce any known hash, so it would raise. We tell it the
# pre-tokenizer is DeepSeek-V3's ("deepseek-v3", which llama.cpp implements), the one a real
# DeepSeek-V3 GGUF carries. Everything else is the converter unmodified.
CONVERT_WRAPPER = r"""
import runpy, sys
src = sys.argv.pop(1)
sys.path.insert(0, src); sys.path.insert(1, src + "/gguf-py")
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
sys.argv[0] = src + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert(src: pathlib.Path, model_dir: pathlib.Path, tok_dir: pathlib.Path, outtype: str, out: pathlib.Path, log):
    # --model-name: otherwise general.name comes from the temporary directory's random name and the
    # committed files would change on every run
    with tempfile.TemporaryDirectory() as tmp:
        t = pathlib.Path(tmp)
        for f in ("config.json", "model.safetensors"):
            os.symlink(model_dir / f, t / f)
        for f in tok_dir.iterdir():
            shutil.copy(f, t / f.name)
        r = subprocess.run([sys.executable, "-c", CONVERT_WRAPPER, str(src), str(t), "--outtype", outtype,
                            "--outfile", str(out), "--model-name", model_dir.name], capture_output=True, text=True)
        log.write(f"=== convert {model_dir.name} {outtype}\n{r.stdout}\n{r.stderr}\n")
        if r.returncode != 0:
            return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return None


def quantize(inp: pathlib.Path, out: pathlib.Path, qtype: str):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPE[qtype]
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(inp).encode(), str(out).encode(), params)
    return None if rc == 0 else f"llama_model_quantize returned {rc}"


def tensor_types(path: pathlib.Path):
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    return {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape]} for t in r.tensors}


# llama.cpp's context in its most precise CPU settings. Its defaults keep the KV cache in F16: in
# deepseek2's MLA graph that is the normalised kv latent and the roped k_pe of every position, so
# with F16 the attention inputs are rounded to 11 bits. On hf_tiny_v3.F16 that rounding flipped one
# near-tied routing decision (layer 1, decode step 4: the 2nd and 3rd expert groups' scores 4.6e-5
# apart), moving that step's logits by up to 2.6 and every later step by up to 0.15 through the
# cache; forcing the same group in transformers reproduces llama.cpp's F16-cache logits to 0.012.
# With an F32 cache llama.cpp's greedy run equals transformers' (F32) and ours, so the oracle uses
# it; the default-settings greedy ids are still recorded (greedy_ids_default_f16_kv_cache).
LLAMA_CONTEXT = dict(n_ctx=64, seed=0, n_threads=2, n_threads_batch=2, n_batch=512, n_ubatch=512,
                     type_k=0, type_v=0,  # GGML_TYPE_F32 K and V caches (default F16)
                     flash_attn=False)


def run_llamacpp(path: pathlib.Path, prompt, **overrides):
    """llama.cpp's logits for every prompt position (one batch, logits_all), then a free-running
    greedy decode: argmax over llama.cpp's own logits step by step with its KV cache, keeping the
    logits each step chose from ([N_GREEDY, vocab])."""
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, vocab_only=False, verbose=False,
                          **{**LLAMA_CONTEXT, **overrides})
    llm.eval(prompt)
    logits = np.array(llm.scores[: len(prompt)], dtype=np.float32)
    greedy, step_logits = [], []
    for _ in range(N_GREEDY):
        step = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        step_logits.append(step)
        nxt = int(np.argmax(step))
        greedy.append(nxt)
        llm.eval([nxt])
    # llama.cpp's own sampler at temperature 0, from a fresh context, as a cross-check.
    llm.reset()
    sampled = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        sampled.append(int(tok))
        if len(sampled) == N_GREEDY:
            break
    del llm
    return logits, greedy, sampled, np.stack(step_logits)


def top2_gaps(rows):
    top2 = np.sort(rows.astype(np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# The greedy comparison needs a prompt whose 16 greedy steps have no near-ties: these tiny random
# models put the top two logits within 0.001 of each other at some step for most prompts (median
# smallest gap over 16 steps: 0.007 on hf_tiny_v3), while two correct engines differ by ~0.01 (F16
# weights) to ~0.1 (8-bit activations, Q8_0) per logit. A near-tie makes the first differing token
# a coin toss, and every later step then runs on a different prefix. So the prompt is chosen by
# llama.cpp alone: GREEDY_CANDIDATES seeded random prompts (BOS then ids 2..vocab-1, the length of
# the fixture prompt), each run 16 greedy steps on every gate file (the model's committed F16 and
# Q8_0), keeping the one whose smallest top-2 gap over all steps and files is largest. sluice plays
# no part in the choice; the test then runs both engines free for 16 steps from it.
GREEDY_CANDIDATES = 2000
GREEDY_SEED = 2026
GREEDY_GATE_TYPES = ["F16", "Q8_0"]


def choose_greedy_prompt(gate_files, prompt_len):
    import llama_cpp
    llms = [llama_cpp.Llama(model_path=str(p), logits_all=True, verbose=False, **LLAMA_CONTEXT) for p in gate_files]
    vocab = llms[0].n_vocab()
    rng = np.random.default_rng(GREEDY_SEED)
    best, best_gap = None, -1.0
    for _ in range(GREEDY_CANDIDATES):
        cand = [0] + [int(x) for x in rng.integers(2, vocab, prompt_len - 1)]
        gap = float("inf")
        for llm in llms:
            llm.reset()
            llm.eval(cand)
            for _ in range(N_GREEDY):
                step = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
                gap = min(gap, float(top2_gaps(step[None])[0]))
                if gap <= best_gap:
                    break
                llm.eval([int(np.argmax(step))])
            if gap <= best_gap:
                break
        if gap > best_gap:
            best, best_gap = cand, gap
    del llms
    return best, {"prompt_ids": best, "min_top2_gap": best_gap, "candidates": GREEDY_CANDIDATES,
                  "seed": GREEDY_SEED, "rule": "of GREEDY_CANDIDATES seeded random prompts, the one whose smallest "
                  "top-2 logit gap over 16 free-running greedy steps of llama.cpp (all gate files) is largest; "
                  "chosen with llama.cpp only"}


def transformers_on_dequantised(gguf_path: pathlib.Path, model_dir: pathlib.Path, prompt):
    """Second oracle for the quantised files: dequantise every tensor of the GGUF with gguf-py,
    load the values into transformers' own DeepSeek model, and run the prompt. llama.cpp should
    match this much more closely than it matches the unquantised model: what is left is llama.cpp's
    own arithmetic (F16 K cache, activations quantised to Q8 for integer dot products), not the
    quantisation of the weights, and a sluice run of the same file should sit at least as close."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.set_grad_enabled(False)
    config = AutoConfig.from_pretrained(model_dir)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    r = GGUFReader(str(gguf_path))
    w = {t.name: torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
         for t in r.tensors}
    n_head = config.num_attention_heads
    top = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
           "output_norm.weight": "model.norm.weight"}
    per_layer = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn_q_a": "self_attn.q_a_proj", "attn_q_a_norm": "self_attn.q_a_layernorm",
                 "attn_q_b": "self_attn.q_b_proj", "attn_q": "self_attn.q_proj",
                 "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa", "attn_kv_a_norm": "self_attn.kv_a_layernorm",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "ffn_gate_inp": "mlp.gate", "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
                 "ffn_up_shexp": "mlp.shared_experts.up_proj", "ffn_down_shexp": "mlp.shared_experts.down_proj"}
    sd = {}
    for name, t in w.items():
        if name in top:
            sd[top[name]] = t
            continue
        _, layer, kind, _ = name.split(".")
        pre = f"model.layers.{layer}."
        if kind in per_layer:
            sd[pre + per_layer[kind] + ".weight"] = t
        elif kind == "exp_probs_b":
            sd[pre + "mlp.gate.e_score_correction_bias"] = t
        elif kind == "attn_k_b":  # [head, kv_lora, nope] -> kv_b rows per head: nope then v
            v_b = w[name.replace("attn_k_b", "attn_v_b")]
            kv_b = torch.cat([t.reshape(n_head, -1, t.shape[-1]).transpose(1, 2), v_b.reshape(n_head, -1, v_b.shape[-1])], dim=1)
            sd[pre + "self_attn.kv_b_proj.weight"] = kv_b.reshape(-1, kv_b.shape[-1])
        elif kind == "ffn_gate_exps":
            sd[pre + "mlp.experts.gate_up_proj"] = torch.cat([t, w[name.replace("gate_exps", "up_exps")]], dim=1)
        elif kind == "ffn_down_exps":
            sd[pre + "mlp.experts.down_proj"] = t
        elif kind in ("attn_v_b", "ffn_up_exps"):
            pass  # consumed with their partner above
        else:
            raise SystemExit(f"{gguf_path.name}: no transformers name for {name}")
    own = model.state_dict()
    for k, v in sd.items():
        if k not in own or own[k].shape != v.shape:
            raise SystemExit(f"{gguf_path.name}: {k} {tuple(v.shape)} does not fit transformers' "
                             f"{tuple(own[k].shape) if k in own else 'nothing'}")
    missing = [k for k in own if k not in sd and "rotary_emb" not in k]
    if missing:
        raise SystemExit(f"{gguf_path.name}: GGUF gives no value for {missing}")
    model.load_state_dict(sd, strict=False)
    return model(torch.tensor([prompt])).logits[0].to(torch.float32).numpy()


def compare(a, b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = [float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))) for x, y in zip(a64, b64)]
    return {"cosine_min": min(cos), "cosine_mean": float(np.mean(cos)),
            "max_abs_delta": float(np.abs(a64 - b64).max()),
            "argmax_agree_positions": int(sum(int(np.argmax(x) == np.argmax(y)) for x, y in zip(a64, b64))),
            "positions": len(cos)}


def llamacpp_commit(src: pathlib.Path):
    """The sdist's vendored llama.cpp has no .git; its CHANGELOG names the upstream commit of the
    release ("update llama.cpp to ggml-org/llama.cpp@<sha>", first such line = newest)."""
    changelog = src.parent.parent / "CHANGELOG.md"
    if changelog.exists():
        for line in changelog.read_text().splitlines():
            if "ggml-org/llama.cpp@" in line:
                return line.split("ggml-org/llama.cpp@")[1].split()[0].strip(").,")
    return "unknown"


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-only", action="store_true",
                    help="only (re)build tests/data/hf_small_v3 (needs torch/transformers, not llama.cpp)")
    ap.add_argument("--llama-cpp-src", type=pathlib.Path,
                    help="llama.cpp source tree (vendor/llama.cpp of the llama-cpp-python sdist)")
    ap.add_argument("--skip-small", action="store_true", help="do not (re)build tests/data/hf_small_v3")
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/llamacpp_fixtures"),
                    help="where uncommitted intermediates (F32 GGUFs, the small model's F16/Q8_0) go")
    args = ap.parse_args()
    if args.small_only:
        make_small_model()
        return 0
    if args.llama_cpp_src is None:
        ap.error("--llama-cpp-src is required (unless --small-only)")
    import llama_cpp

    if not args.skip_small:
        make_small_model()
    OUT.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.gguf"):
        old.unlink()
    for old in OUT.glob("*logits.npy"):  # incl. *.greedy_logits.npy
        old.unlink()
    tok_dir = OUT / "tokenizer"
    write_tokenizer(tok_dir)
    log = open(args.work / "convert.log", "w")

    manifest = {
        "generator": "scripts/make_llamacpp_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_commit": llamacpp_commit(args.llama_cpp_src.resolve()),
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        "converter": "vendor/llama.cpp/convert_hf_to_gguf.py of the llama-cpp-python sdist "
                     "(pre-tokenizer forced to 'deepseek-v3', see CONVERT_WRAPPER)",
        "quantiser": "llama_cpp.llama_model_quantize (llama.cpp's llama-quant.cpp), input = converter's F32 GGUF",
        "llama_cpp_context": {**{k: v for k, v in LLAMA_CONTEXT.items() if k not in ("type_k", "type_v")},
                              "type_k": "F32", "type_v": "F32", "logits_all": True, "device": "CPU"},
        "llama_cpp_context_why": "llama.cpp's most precise CPU settings: F32 K/V caches (its default F16 cache rounds "
                                 "deepseek2's cached kv latent and k_pe to 11 bits; on hf_tiny_v3.F16 that flipped a "
                                 "routing near-tie, layer 1 decode step 4, groups 4.6e-5 apart, and llama.cpp's greedy "
                                 "run left transformers' at step 4: greedy_ids_default_f16_kv_cache), no flash attention",
        "logits": "<file>.logits.npy: float32 [prompt positions, vocab], llama.cpp CPU, one batch, n_threads 2",
        "greedy": f"greedy_ids: the first {N_GREEDY} ids of a free-running greedy run (argmax over llama.cpp's logits "
                  f"step by step with its KV cache) from greedy_prompt_ids (greedy_prompts: how that prompt was chosen, by "
                  f"llama.cpp's top-2 gaps alone); <file>.greedy_logits.npy: float32 [{N_GREEDY}, vocab], the logits each "
                  f"step chose from; greedy_top2_gaps: their top-1 minus top-2. fixture_prompt_greedy_ids: the same run from "
                  f"tests/data/<model>/expected.json's prompt (compared with transformers' greedy_ids), and "
                  f"..._default_f16_kv_cache: with llama.cpp's default F16 K/V cache",
        "tolerance_notes": ("compare against transformers' tests/data/<model>/logits.npy: cosine per prompt position "
                            "(min over positions) and max |delta|. F16/Q8_0 should agree closely; the tiny models' "
                            "Q4_K_M/Q2_K are not real K-quants (rows of 64/48 fall back), hf_small_v3's are. These random-weight "
                            "models are very sensitive to weight rounding (MoE routing flips), so quantised files sit far "
                            "from the unquantised transformers logits; vs_transformers_on_dequantised_weights (transformers "
                            "run on gguf-py's dequantisation of the same file, saved as <file>.hf_dequant_logits.npy) is the "
                            "like-for-like comparison. Greedy agreement with transformers is limited by near-ties: see "
                            "greedy_min_top2_gap in tests/data/<model>/expected.json."),
        "greedy_prompts": {},
        "files": [],
    }
    for model in TINY_MODELS + [SMALL_MODEL]:
        mdir = DATA / model
        expected = json.loads((mdir / "expected.json").read_text())
        hf_logits = np.load(mdir / "logits.npy")
        prompt = expected["prompt_ids"]
        f32 = args.work / f"{model}.F32.gguf"
        sources = {"F32": ("f32", f32), "F16": ("f16", None), "Q8_0": ("q8_0", None)}
        produced, entries = {}, []
        for qtype in ["F32", "F16", "Q8_0", "Q4_K_M", "Q2_K"]:
            committed = qtype in COMMIT[model]
            dest = (OUT if committed else args.work) / f"{model}.{qtype}.gguf"
            entry = {"model": model, "type": qtype, "file": dest.name if committed else None}
            if qtype in sources:
                err = convert(args.llama_cpp_src, mdir, tok_dir, sources[qtype][0], dest, log)
            elif "F32" in produced:
                err = quantize(produced["F32"], dest, qtype)
            else:
                err = "no F32 GGUF to quantise (conversion failed)"
            if err is None and not dest.exists():
                err = "tool reported success but wrote no file"
            if err:
                entry["error"] = err + (f" ({LOAD_FAILURE_NOTES[model]})" if model in LOAD_FAILURE_NOTES else "")
                print(f"{model} {qtype}: FAILED: {err}")
                if qtype != "F32":
                    manifest["files"].append(entry)
                continue
            produced[qtype] = dest
            if qtype != "F32":  # F32: intermediate only
                entries.append((qtype, committed, dest, entry))

        # The prompt of the free-running greedy comparison (see choose_greedy_prompt).
        greedy_prompt, selection = prompt, None
        gate = [produced[t] for t in GREEDY_GATE_TYPES if t in produced and t in COMMIT[model]]
        if gate:
            try:
                greedy_prompt, selection = choose_greedy_prompt(gate, len(prompt))
            except Exception as e:
                print(f"{model}: no greedy prompt chosen: {e}")
        if selection:
            selection["gate_files"] = [p.name for p in gate]
            manifest["greedy_prompts"][model] = selection
            print(f"{model}: greedy prompt {greedy_prompt}, llama.cpp's smallest top-2 gap {selection['min_top2_gap']:.4f} "
                  f"(best of {selection['candidates']})")

        for qtype, committed, dest, entry in entries:
            entry["size_bytes"] = dest.stat().st_size
            entry["sha256"] = sha256(dest)
            types = tensor_types(dest)
            entry["tensor_types"] = {k: v["type"] for k, v in types.items()}
            entry["tensor_shapes"] = {k: v["shape"] for k, v in types.items()}
            counts = {}
            for v in types.values():
                counts[v["type"]] = counts.get(v["type"], 0) + 1
            entry["type_counts"] = counts
            try:
                logits, fixture_greedy, _, _ = run_llamacpp(dest, prompt)
                default_greedy = run_llamacpp(dest, prompt, type_k=None, type_v=None)[1]
                _, greedy, sampled, greedy_logits = run_llamacpp(dest, greedy_prompt)
            except Exception as e:  # llama.cpp refused the file: record why
                entry["error"] = f"llama.cpp could not run it: {e}" + (
                    f" ({LOAD_FAILURE_NOTES[model]})" if model in LOAD_FAILURE_NOTES else "")
                print(f"{model} {qtype}: llama.cpp FAILED: {e}")
                manifest["files"].append(entry)
                continue
            if committed:
                np.save(OUT / f"{model}.{qtype}.logits.npy", logits)
                entry["logits_file"] = f"{model}.{qtype}.logits.npy"
                np.save(OUT / f"{model}.{qtype}.greedy_logits.npy", greedy_logits)
                entry["greedy_logits_file"] = f"{model}.{qtype}.greedy_logits.npy"
            entry["greedy_prompt_ids"] = greedy_prompt
            entry["greedy_ids"] = greedy
            entry["greedy_top2_gaps"] = [round(float(g), 6) for g in top2_gaps(greedy_logits)]
            entry["sampler_temp0_ids"] = sampled
            entry["fixture_prompt_greedy_ids"] = fixture_greedy
            entry["fixture_prompt_greedy_ids_default_f16_kv_cache"] = default_greedy
            entry["vs_transformers"] = compare(logits, hf_logits)
            hg = expected["greedy_ids"][:N_GREEDY]
            entry["vs_transformers"]["greedy_prefix_agree"] = next(
                (i for i, (a, b) in enumerate(zip(fixture_greedy, hg)) if a != b), N_GREEDY)
            if qtype != "F16":
                deq = transformers_on_dequantised(dest, mdir, prompt)
                entry["vs_transformers_on_dequantised_weights"] = compare(logits, deq)
                if committed:
                    np.save(OUT / f"{model}.{qtype}.hf_dequant_logits.npy", deq)
                    entry["hf_dequant_logits_file"] = f"{model}.{qtype}.hf_dequant_logits.npy"
            manifest["files"].append(entry)
            c = entry["vs_transformers"]
            if "vs_transformers_on_dequantised_weights" in entry:
                d = entry["vs_transformers_on_dequantised_weights"]
                print(f"{model} {qtype}: vs transformers on dequantised weights: cos min {d['cosine_min']:.6f}, "
                      f"max|d| {d['max_abs_delta']:.4g}")
            print(f"{model} {qtype}: {entry['size_bytes']} B, types {counts}, cos min {c['cosine_min']:.6f}, "
                  f"max|d| {c['max_abs_delta']:.4g}, fixture-prompt greedy prefix agree {c['greedy_prefix_agree']}/{N_GREEDY}, "
                  f"greedy-prompt min top-2 gap {min(entry['greedy_top2_gaps']):.4f}")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"tests/data/llamacpp: {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
