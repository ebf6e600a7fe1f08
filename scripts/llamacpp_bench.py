#!/usr/bin/env python3
"""llama.cpp as the speed peer: prompt (prefill) and decode tokens/s for one GGUF file, printed as
JSON, optionally under a memory cap (to compare with sluice streaming a model bigger than RAM).

  pip install llama-cpp-python        # builds llama.cpp
  python3 scripts/llamacpp_bench.py model.gguf --threads 2 --prompt-lengths 16,128,512 --decode 32
  python3 scripts/llamacpp_bench.py model.gguf --memory-max 2G     # same, inside a memory cgroup

llama.cpp runs as llama_cpp.Llama with use_mmap=True (its default), so under a cap its weights
are page cache that the kernel evicts and re-reads, like any mmap-streaming baseline.

Memory cap: the benchmark re-runs itself in a child process placed in a fresh cgroup with the
limit, then reports the cgroup's peak usage and how often the limit was hit. It tries, in order:
  1. cgroup v2 (/sys/fs/cgroup/cgroup.controllers lists "memory"): <dir>/memory.max
  2. cgroup v1 (/sys/fs/cgroup/memory mounted): <dir>/memory.limit_in_bytes  (page cache of the
     mmapped model is charged to the group, so clean file pages are reclaimed under the cap)
  3. systemd-run --scope -p MemoryMax=... (only when systemd is PID 1)
On this dev container (root, no systemd, cgroup v1 memory controller mounted, v2 "unified" has
no memory controller) method 2 works; systemd-run does not (systemd is "offline").
Each measurement: prompt of random ids (seeded) evaluated as one batch from an empty cache
(prefill), then --decode single-token steps feeding back the argmax (decode); best of --repeat.
"""
import argparse
import json
import os
import pathlib
import shutil
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


def bench(args) -> dict:
    import llama_cpp
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    n_ctx = max(lengths) + args.decode + 8
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
    for n in lengths:
        prompt = [int(x) for x in rng.integers(2, n_vocab, size=n)]
        best_prefill, best_decode = float("inf"), float("inf")
        for _ in range(args.repeat):
            llm.reset()  # n_tokens = 0; eval() then drops the cached positions >= 0
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            for _ in range(args.decode):
                # logits_all is off (as in normal use), so llm.scores is not filled: read the
                # last position's logits straight from the context
                last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
                nxt = int(np.argmax(last))
                llm.eval([nxt])
            t2 = time.perf_counter()
            best_prefill = min(best_prefill, t1 - t0)
            best_decode = min(best_decode, t2 - t1)
        results.append({
            "prompt_tokens": n,
            "prompt_tokens_per_s": n / best_prefill,
            "prompt_s": best_prefill,
            "decode_tokens": args.decode,
            "decode_tokens_per_s": args.decode / best_decode if args.decode else None,
            "decode_s": best_decode,
        })
    return {
        "engine": "llama.cpp via llama-cpp-python " + llama_cpp.__version__,
        "gguf": os.path.abspath(args.gguf),
        "gguf_bytes": os.path.getsize(args.gguf),
        "threads": args.threads,
        "use_mmap": True,
        "repeat": args.repeat,
        "load_s": load_s,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "results": results,
    }


def cgroup_v2_root():
    p = pathlib.Path("/sys/fs/cgroup")
    ctl = p / "cgroup.controllers"
    if ctl.exists() and "memory" in ctl.read_text().split():
        return p
    return None


def run_capped(args, child_argv) -> dict:
    """Run child_argv inside a fresh memory cgroup limited to args.memory_max; return its JSON
    plus the cgroup's peak usage and limit hits."""
    limit = parse_bytes(args.memory_max)
    name = f"sluice_llamacpp_bench_{os.getpid()}"
    v2, v1 = cgroup_v2_root(), pathlib.Path("/sys/fs/cgroup/memory")
    if v2 is not None or (v1 / "memory.limit_in_bytes").exists():
        if v2 is not None:
            cg = v2 / name
            cg.mkdir()
            (cg / "memory.max").write_text(str(limit))
            (cg / "memory.swap.max").write_text("0") if (cg / "memory.swap.max").exists() else None
            method = "cgroup v2 memory.max"
        else:
            cg = v1 / name
            cg.mkdir()
            (cg / "memory.limit_in_bytes").write_text(str(limit))
            method = "cgroup v1 memory.limit_in_bytes"
        procs = str(cg / "cgroup.procs")
        try:
            # the child joins the group before it execs, so everything it maps is charged there
            r = subprocess.run(child_argv, capture_output=True, text=True,
                               preexec_fn=lambda: open(procs, "w").write(str(os.getpid())))
            if v2 is not None:
                peak_file = cg / "memory.peak"
                peak = int(peak_file.read_text()) if peak_file.exists() else None
                events = dict(l.split() for l in (cg / "memory.events").read_text().splitlines())
                hits = int(events.get("max", 0))
            else:
                peak = int((cg / "memory.max_usage_in_bytes").read_text())
                hits = int((cg / "memory.failcnt").read_text())
        finally:
            cg.rmdir()
    elif shutil.which("systemd-run") and subprocess.run(["systemctl", "is-system-running"],
                                                         capture_output=True, text=True).stdout.strip() in ("running", "degraded"):
        method, peak, hits = "systemd-run --scope MemoryMax", None, None
        r = subprocess.run(["systemd-run", "--scope", "-q", "-p", f"MemoryMax={limit}", "-p", "MemorySwapMax=0"]
                           + child_argv, capture_output=True, text=True)
    else:
        raise SystemExit("no way to cap memory here: no cgroup v2 memory controller, no cgroup v1 memory "
                         "hierarchy at /sys/fs/cgroup/memory, and systemd is not running")
    if r.returncode != 0:
        raise SystemExit(f"benchmark under {limit} bytes ({method}) failed with exit {r.returncode} "
                         f"(-9 or 137: SIGKILL, i.e. the OOM killer at the cap):\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout)
    out["memory_cap"] = {"bytes": limit, "method": method, "peak_bytes": peak, "limit_hits": hits}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-lengths", default="16,128,512")
    ap.add_argument("--decode", type=int, default=32, help="decode steps after each prompt")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per prompt length")
    ap.add_argument("--memory-max", help="cap, e.g. 512M or 8G: run inside a memory cgroup")
    args = ap.parse_args()
    if args.memory_max:
        child = [sys.executable, os.path.abspath(__file__), args.gguf, "--threads", str(args.threads),
                 "--prompt-lengths", args.prompt_lengths, "--decode", str(args.decode),
                 "--repeat", str(args.repeat)]
        out = run_capped(args, child)
    else:
        out = bench(args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
