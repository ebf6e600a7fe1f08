#!/usr/bin/env python3
"""The streaming benchmark of issue 6: sluice against llama.cpp on a DeepSeek-V3-shaped GGUF
larger than the memory both are allowed, side by side in one run, with the disk's own rate
(sluice bench-io) and a roofline for the longest prompt.

  python3 scripts/bench-streaming.py                       # the full run (model made if absent)
  python3 scripts/bench-streaming.py --model FILE.gguf     # any deepseek2 GGUF
  python3 scripts/bench-streaming.py --quick               # prompt 16, decode 4, batch 1,4: a smoke run
  python3 scripts/bench-streaming.py --skip-peer           # sluice only (the peer is the slow half)
  python3 scripts/bench-streaming.py --peer-json bench-results/X.json   # reuse a peer result

Steps:
  1. the model: when --model is the default and absent, `sluice synth -o models/bench-v3-5L-q4k.gguf
     --preset v3 --layers 5 --dense-layers 1 --expert-type q4_k --seed 1` (27 GB: > 3x the 8 GiB cap);
  2. `sluice bench-io MODEL --bs 4M --qd 8 --json`: O_DIRECT read rate of the same file (io_uring
     and fio, alternating), the disk's ceiling for the roofline and the decode throughput target;
  3. `sluice bench -m MODEL --json --threads T --prompt-lengths ... --decode D --batch-sizes ...
     --ram CAP-MARGIN --resident auto` inside a memory cgroup of CAP (scripts/memcap.py);
  4. llama.cpp (scripts/llamacpp_bench.py, llama-cpp-python, mmap) under the same CAP, threads,
     prompt lengths and decode count (decode after the first prompt, like sluice);
  5. one table, both engines and the ratios, and the targets; JSON in bench-results/.

Roofline for the longest prompt P (tokens/s = P / time):
  read time    = (bytes of every layer's dense part and experts - bytes the budget keeps resident)
                 / bench-io rate (P x top_k routes touch essentially every expert: 512 x 8 of 256);
  compute time = P x dense FLOPs per token / dense GEMM rate (measured on the model's largest dense
                 matrix at P tokens) + P x routed-expert FLOPs per token / expert GEMM rate (measured
                 on one expert at P x top_k / n_experts tokens, what each expert gets) + attention;
  roofline time = max(read, compute) — with reads and compute overlapped the slower one bounds the
  step; the issue's min(...) of rates is the same thing. Target: sluice's time <= roofline / 0.8.
All speed figures on the project's 2-core machines are noisy (shared CPUs and disk): compare the
engines within one run, and rerun when the load average is high.
"""
import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from memcap import parse_bytes, run_capped  # noqa: E402

DEFAULT_MODEL = "models/bench-v3-5L-q4k.gguf"


def log(msg):
    print(f"[bench-streaming {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_sluice(arg):
    if arg:
        return arg
    if os.environ.get("SLUICE_BIN"):
        return os.environ["SLUICE_BIN"]
    # the most recently built of the build directories: a stale one left beside a fresh one would
    # measure old code (it happened: build/ from hours before beside build-main/)
    found = sorted((p for p in ROOT.glob("build*/engine/sluice") if p.is_file()), key=lambda p: p.stat().st_mtime)
    if found:
        return str(found[-1])
    raise SystemExit("no sluice binary: build it (scripts/build.sh) or pass --sluice / set SLUICE_BIN")


def make_model(sluice, path):
    log(f"making {path} with sluice synth (27 GB at DeepSeek-V3 dimensions; a few minutes at disk speed)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sluice, "synth", "-o", str(path), "--preset", "v3", "--layers", "5", "--dense-layers", "1",
                    "--expert-type", "q4_k", "--seed", "1"], check=True)


def drop_page_cache():
    """Both engines start cold. A memory cgroup does not charge a group for page-cache pages
    another group (bench-io's buffered and mmap runs, an earlier uncapped run) left behind: the
    capped peer would read them for free, and look as if the model fitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        log(f"warning: cannot drop the page cache ({e}): cached pages of the model flatter the mmap peer")
        return False


def bench_io(sluice, model, args):
    log("sluice bench-io (O_DIRECT, io_uring and fio alternating)")
    cmd = [sluice, "bench-io", str(model), "--bs", "4M", "--qd", "8", "--rounds", str(args.io_rounds),
           "--seconds", "5", "--json"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log("bench-io failed with fio beside it (a file smaller than a request trips fio): again without fio")
        r = subprocess.run(cmd + ["--no-fio"], stdout=subprocess.PIPE, text=True, check=True)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    rates = {m["method"]: m["gb_per_s_median"] for m in j["methods"]}
    j["rate_gb_per_s"] = rates.get("sluice io_uring") or rates.get("sluice pread pool")
    j["fio_gb_per_s"] = rates.get("fio io_uring")
    return j


def bench_sluice(sluice, model, cap, args):
    ram = cap - parse_bytes(args.margin)
    cmd = [sluice, "bench", "-m", str(model), "--json", "--threads", str(args.threads), "--prompt-lengths",
           args.prompt_lengths, "--decode", str(args.decode), "--batch-sizes", args.batch_sizes, "--ram",
           str(ram), "--resident", args.resident] + args.sluice_arg
    log(f"sluice under a {cap / 2**30:.2f} GiB cgroup: {' '.join(cmd)}")
    drop_page_cache()
    t0 = time.time()
    r, info = run_capped(cmd, cap, capture_stdout=True, stderr=subprocess.PIPE, name_hint="sluice_bench")
    if r.returncode != 0:
        raise SystemExit(f"sluice bench failed (exit {r.returncode}; -9/137 = killed at the memory cap):\n"
                         f"{r.stderr[-3000:]}")
    j = json.loads(r.stdout)
    j["memory_cap"] = info
    j["wall_s"] = time.time() - t0
    return j


def bench_peer(model, cap, args):
    cmd = [sys.executable, str(HERE / "llamacpp_bench.py"), str(model), "--threads", str(args.threads),
           "--prompt-lengths", args.prompt_lengths, "--decode", str(args.decode), "--repeat", "1",
           "--decode-first-only", "--memory-max", str(cap)]
    log(f"llama.cpp under the same cap (slow: it re-reads the file through the page cache): {' '.join(cmd)}")
    drop_page_cache()
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log(f"llama.cpp benchmark failed (exit {r.returncode}); the table has sluice only")
        return {"error": f"exit {r.returncode}", "results": []}
    j = json.loads(r.stdout)
    j["wall_s"] = time.time() - t0
    return j


def roofline(s, io_rate_gb):
    """Tokens/s and seconds the hardware allows for the longest prompt (see the module doc)."""
    rf = s.get("roofline")
    if not rf or not io_rate_gb:
        return None
    p = rf["prompt_tokens"]
    rates = {g["what"]: g["flops_per_s"] for g in rf["gemm"]}
    read_bytes = max(0, rf["layer_bytes"] - rf["resident_weight_bytes"])
    read_s = read_bytes / (io_rate_gb * 1e9)
    dense_rate = rates.get("dense") or rates.get("expert")
    expert_rate = rates.get("expert") or dense_rate
    attention = rf["attention_flops_per_token_per_position"] * p * (p + 1) / 2
    compute_s = (p * rf["dense_flops_per_token"] + attention + rf["head_flops_per_sequence"]) / dense_rate + \
        p * rf["expert_flops_per_token"] / expert_rate
    t = max(read_s, compute_s)
    return {"prompt_tokens": p, "read_bytes": read_bytes, "read_s": read_s, "compute_s": compute_s,
            "bound": "disk" if read_s >= compute_s else "compute", "seconds": t, "tokens_per_s": p / t,
            "dense_gflops_per_s": dense_rate / 1e9, "expert_gflops_per_s": expert_rate / 1e9}


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def table(s, peer, io, rl, args):
    phases = {p["phase"]: p for p in s["phases"]}
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    batches = [int(x) for x in args.batch_sizes.split(",")]
    peer_by_len = {r["prompt_tokens"]: r for r in (peer or {}).get("results", [])}
    rows = []  # (label, sluice, peer, unit/format, target text)

    def tps(name):
        p = phases.get(name)
        return p["tokens_per_s"] if p else None

    peer_decode = None
    if peer_by_len:
        first = peer_by_len.get(lengths[0])
        peer_decode = first and first.get("decode_tokens_per_s")
    rows.append(("decode tokens/s", tps("decode"), peer_decode, "ratio >= 3"))
    for n in lengths:
        pr = peer_by_len.get(n)
        rows.append((f"prompt {n} tokens/s", tps(f"prompt {n}"), pr and pr["prompt_tokens_per_s"],
                     "ratio >= 10" if n == 16 else "ratio >= 1"))
    for b in batches:
        rows.append((f"batch {b} decode tokens/s", tps(f"decode x{b}"), None, "grows ~linearly"))
    dec = phases.get("decode", {}).get("streaming", {})
    rows.append(("disk GB/s during decode", dec.get("read_gb_per_s"), None,
                 f">= 85% of bench-io {fmt(io and io['rate_gb_per_s'])}"))
    for n in lengths:
        st = phases.get(f"prompt {n}", {}).get("streaming", {})
        rows.append((f"overlap efficiency, prompt {n}", st.get("overlap_efficiency"), None, ">= 0.9"))
    for name in ["decode"] + [f"prompt {n}" for n in lengths]:
        st = phases.get(name, {}).get("streaming", {})
        need = st.get("experts_needed") or 0
        rows.append((f"cache hit % ({name})", 100 * st.get("cache_hits", 0) / need if need else None, None, ""))
        rows.append((f"prefetch hit % ({name})", 100 * st.get("prefetch_hits", 0) / need if need else None, None,
                     f"{st.get('predicted', 0)} guessed, {st.get('guesses_evicted', 0)} evicted unused"))
    peer_read = {}
    if peer_by_len:
        first = peer_by_len.get(lengths[0])
        if first and first.get("decode_read_bytes") is not None:
            peer_read["decode"] = first["decode_read_bytes"] / max(1, first["decode_tokens"]) / 1e9
        for n in lengths:
            pr = peer_by_len.get(n)
            if pr and pr.get("prompt_read_bytes") is not None:
                peer_read[f"prompt {n}"] = pr["prompt_read_bytes"] / n / 1e9
    for name in ["decode"] + [f"prompt {n}" for n in lengths]:
        p = phases.get(name)
        v = p["streaming"]["bytes_read"] / p["tokens"] / 1e9 if p else None
        rows.append((f"GB read per token ({name})", v, peer_read.get(name), "lower is better"))
    cap_s = s.get("memory_cap", {})
    cap_p = (peer or {}).get("memory_cap", {})
    rows.append(("peak memory GiB (cgroup)", cap_s.get("peak_bytes") and cap_s["peak_bytes"] / 2**30,
                 cap_p.get("peak_bytes") and cap_p["peak_bytes"] / 2**30,
                 f"cap {cap_s.get('bytes', 0) / 2**30:.2f} GiB"))
    if rl:
        p = rl["prompt_tokens"]
        rows.append((f"roofline prompt {p} tokens/s", rl["tokens_per_s"], None,
                     f"{rl['bound']}-bound: read {rl['read_s']:.1f}s, compute {rl['compute_s']:.1f}s"))
        rows.append((f"sluice / roofline at {p}", ratio(tps(f"prompt {p}"), rl["tokens_per_s"]), None, ">= 0.8"))

    out = []
    out.append(f"{'':<34} {'sluice':>10} {'llama.cpp':>10} {'ratio':>8}  target / note")
    for label, a, b, note in rows:
        r = ratio(a, b)
        out.append(f"{label:<34} {fmt(a, '.3f'):>10} {fmt(b, '.3f'):>10} {fmt(r, '.2f'):>8}  {note}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="GGUF to benchmark (default: made with sluice synth)")
    ap.add_argument("--sluice", help="sluice binary (default: $SLUICE_BIN, else build*/engine/sluice)")
    ap.add_argument("--memory-max", default="8G", help="memory cgroup cap for both engines")
    ap.add_argument("--margin", default="768M",
                    help="sluice's --ram is the cap minus this (binary, stacks, page cache of its own reads)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-lengths", default="16,128,512")
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--batch-sizes", default="1,4,16,64")
    ap.add_argument("--resident", default="auto")
    ap.add_argument("--io-rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="prompt 16, decode 4, batch 1,4: a smoke run")
    ap.add_argument("--skip-io", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-sluice", action="store_true")
    ap.add_argument("--peer-json", help="use this earlier result (a bench-results JSON or llamacpp_bench output)")
    ap.add_argument("--sluice-arg", action="append", default=[], help="extra argument for sluice bench (repeat)")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args()
    if args.quick:
        args.prompt_lengths, args.decode, args.batch_sizes = "16", 4, "1,4"

    os.chdir(ROOT)
    sluice = find_sluice(args.sluice)
    model = pathlib.Path(args.model)
    if not model.exists():
        if args.model != DEFAULT_MODEL:
            raise SystemExit(f"{model}: no such file")
        make_model(sluice, model)
    cap = parse_bytes(args.memory_max)
    size = model.stat().st_size
    log(f"model {model} {size / 1e9:.1f} GB, cap {cap / 2**30:.2f} GiB ({size / cap:.1f}x the cap), "
        f"load average {os.getloadavg()[0]:.2f}")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    built = datetime.datetime.utcfromtimestamp(os.stat(sluice).st_mtime).isoformat() + "Z"
    log(f"sluice binary {sluice} (built {built}; tree at {head or '?'})")

    result = {"model": str(model), "model_bytes": size, "memory_max": cap, "threads": args.threads,
              "prompt_lengths": args.prompt_lengths, "decode": args.decode, "batch_sizes": args.batch_sizes,
              "started": datetime.datetime.utcnow().isoformat() + "Z", "load_average_start": os.getloadavg(),
              "sluice_binary": sluice, "sluice_built": built, "git_head": head}
    io = None if args.skip_io else bench_io(sluice, model, args)
    result["bench_io"] = io
    s = None if args.skip_sluice else bench_sluice(sluice, model, cap, args)
    result["sluice"] = s
    peer = None
    if args.peer_json:
        pj = json.loads(pathlib.Path(args.peer_json).read_text())
        peer = pj.get("llama_cpp", pj)
    elif not args.skip_peer:
        peer = bench_peer(model, cap, args)
    result["llama_cpp"] = peer
    result["load_average_end"] = os.getloadavg()
    rl = roofline(s, io and io["rate_gb_per_s"]) if s else None
    result["roofline"] = rl

    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"streaming-{model.stem}-{stamp}.json"
    if s:
        result["table"] = table(s, peer, io, rl, args)
    path.write_text(json.dumps(result, indent=1))
    print(f"model {model} ({size / 1e9:.1f} GB) under a {cap / 2**30:.2f} GiB memory cgroup, {args.threads} threads; "
          f"bench-io {fmt(io and io['rate_gb_per_s'])} GB/s (fio {fmt(io and io['fio_gb_per_s'])})")
    if s:
        print(result["table"])
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
