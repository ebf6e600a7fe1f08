#!/usr/bin/env python3
"""llama.cpp as the speed peer: prompt (prefill) and decode tokens/s for one GGUF file, printed as
JSON, optionally under a memory cap (to compare with sluice streaming a model bigger than RAM).

  pip install llama-cpp-python        # builds llama.cpp
  python3 scripts/llamacpp_bench.py model.gguf --threads 2 --prompt-lengths 16,128,512 --decode 32
  python3 scripts/llamacpp_bench.py model.gguf --memory-max 2G     # same, inside a memory cgroup

llama.cpp runs as llama_cpp.Llama with use_mmap=True (its default), so under a cap its weights
are page cache that the kernel evicts and re-reads, like any mmap-streaming baseline.

Memory cap: the benchmark re-runs itself in a child process placed in a fresh cgroup with the
limit (scripts/memcap.py: cgroup v2, else v1, else systemd-run), then reports the cgroup's peak
usage and how often the limit was hit. Page cache of the mmapped model is charged to the group,
so clean file pages are reclaimed under the cap.
Each measurement: prompt of random ids (seeded) evaluated as one batch from an empty cache
(prefill), then --decode single-token steps feeding back the argmax (decode); best of --repeat.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def parse_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().rstrip("B").rstrip("I")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def read_bytes() -> int:
    """Bytes this process has caused to be read from storage (page-cache misses included)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def bench(args) -> dict:
    import llama_cpp
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    n_ctx = max(lengths) + args.decode + 8
    # llama.cpp repacks Q4_K/Q4_0/IQ4_NL weights into anonymous memory (CPU_REPACK "extra" buffer
    # types) when it can: the whole 27 GB model copied into RAM, which fails outright above RAM and
    # is not mmap streaming. Off, as for any model larger than memory (llama-bench's --no-repack).
    import llama_cpp.llama_cpp as low
    default_params = low.llama_model_default_params

    def no_repack_params():
        p = default_params()
        p.use_extra_bufts = args.repack
        return p
    low.llama_model_default_params = no_repack_params
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=n_ctx, n_batch=max(lengths), n_ubatch=max(lengths),
                          n_threads=args.threads, n_threads_batch=args.threads, use_mmap=True,
                          seed=0, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(0)
    # untimed warm-up: first-touch of the mmapped weights, thread pool start, graph allocation
    llm.eval([int(x) for x in rng.integers(2, n_vocab, size=min(lengths))])
    for _ in range(min(args.decode, 4)):
        llm.eval([2])
    results = []
    for i, n in enumerate(lengths):
        prompt = [int(x) for x in rng.integers(2, n_vocab, size=n)]
        n_decode = args.decode if i == 0 or not args.decode_first_only else 0
        best_prefill, best_decode = float("inf"), float("inf")
        prompt_read = decode_read = None
        for _ in range(args.repeat):
            llm.reset()  # n_tokens = 0; eval() then drops the cached positions >= 0
            r0 = read_bytes()
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            r1 = read_bytes()
            for _ in range(n_decode):
                # logits_all is off (as in normal use), so llm.scores is not filled: read the
                # last position's logits straight from the context
                last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
                nxt = int(np.argmax(last))
                llm.eval([nxt])
            t2 = time.perf_counter()
            if t1 - t0 < best_prefill:
                best_prefill, prompt_read = t1 - t0, r1 - r0
            if t2 - t1 < best_decode:
                best_decode, decode_read = t2 - t1, read_bytes() - r1
        results.append({
            "prompt_tokens": n,
            "prompt_tokens_per_s": n / best_prefill,
            "prompt_s": best_prefill,
            "prompt_read_bytes": prompt_read,
            "decode_tokens": n_decode,
            "decode_tokens_per_s": n_decode / best_decode if n_decode else None,
            "decode_s": best_decode if n_decode else None,
            "decode_read_bytes": decode_read if n_decode else None,
        })
    return {
        "engine": "llama.cpp via llama-cpp-python " + llama_cpp.__version__,
        "gguf": os.path.abspath(args.gguf),
        "gguf_bytes": os.path.getsize(args.gguf),
        "threads": args.threads,
        "use_mmap": True,
        "repack": args.repack,
        "repeat": args.repeat,
        "load_s": load_s,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "results": results,
    }


def run_capped(args, child_argv) -> dict:
    """Run child_argv inside a fresh memory cgroup limited to args.memory_max (scripts/memcap.py,
    the same cap sluice's benchmark uses); return its JSON plus the group's peak and limit hits."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from memcap import run_capped as memcap_run
    limit = parse_bytes(args.memory_max)
    r, cap = memcap_run(child_argv, limit, capture_stdout=True, stderr=subprocess.PIPE,
                        name_hint="sluice_llamacpp_bench")
    if r.returncode != 0:
        raise SystemExit(f"benchmark under {limit} bytes ({cap['method']}) failed with exit {r.returncode} "
                         f"(-9 or 137: SIGKILL, i.e. the OOM killer at the cap):\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout)
    out["memory_cap"] = cap
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-lengths", default="16,128,512")
    ap.add_argument("--decode", type=int, default=32, help="decode steps after each prompt")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per prompt length")
    ap.add_argument("--repack", action="store_true",
                    help="let llama.cpp repack weights into RAM (CPU_REPACK; only for models that fit)")
    ap.add_argument("--decode-first-only", action="store_true",
                    help="decode only after the first prompt length (as sluice bench does)")
    ap.add_argument("--memory-max", help="cap, e.g. 512M or 8G: run inside a memory cgroup")
    args = ap.parse_args()
    if args.memory_max:
        child = [sys.executable, os.path.abspath(__file__), args.gguf, "--threads", str(args.threads),
                 "--prompt-lengths", args.prompt_lengths, "--decode", str(args.decode),
                 "--repeat", str(args.repeat)] + (["--decode-first-only"] if args.decode_first_only else []) + \
                (["--repack"] if args.repack else [])
        out = run_capped(args, child)
    else:
        out = bench(args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
