#!/usr/bin/env python3
"""sluice batch against llama.cpp's own server on one offline job, side by side in one run.

  python3 bench/bench_batch.py                       # the issue's job: 512 requests (long: hours here)
  python3 bench/bench_batch.py --requests 32 --prompt 64,128 --output 8,16   # the run quoted in README

The job: --requests /v1/completions requests whose prompts are random token ids (lengths uniform
in --prompt), each generating exactly its max_tokens (uniform in --output; greedy, ignore_eos),
on the 5-layer DeepSeek-V3-shaped Q4_K GGUF, each engine inside the same memory cgroup
(scripts/memcap.py, --memory-max 8G) with --threads 2, page cache dropped before each.
  sluice:    `sluice batch` (continuous batching, --max-seqs), budget --ram = cap - 768M.
  llama.cpp: llama-server built from the llama-cpp-python sdist's vendored llama.cpp (see
             --llama-server), -np SLOTS parallel slots with continuous batching, fed the same
             requests by SLOTS concurrent clients.
Reported: output tokens/s, GB read per output token, the batch sluice's scheduler chose, and the
roofline of the job: its output tokens over max(compute, reading), where compute = all tokens x
FLOPs per token (attention's, which grow with each request's positions, included) / the GEMM rate
`sluice bench` measures on the model's own matrices, and reading = the fewest passes the job
allows (max(longest output, output tokens / max-seqs)) x the streamed bytes of a pass / the disk
rate `sluice bench-io` measures. With --spill-cache-ram, a second sluice run spills the latent
caches (--cache-ram) and may carry a larger batch (--spill-max-seqs); its roofline uses its own
max-seqs. Results go to bench-results/.
Timing on the shared 2-core machines is noisy: compare within one run.
"""
import argparse
import json
import os
import pathlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import importlib.util  # noqa: E402
from memcap import parse_bytes, run_capped  # noqa: E402

# The streaming benchmark's cold start (drop the page cache before each engine), shared.
_spec = importlib.util.spec_from_file_location("bench_streaming", ROOT / "scripts" / "bench-streaming.py")
_bench_streaming = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_streaming)
drop_page_cache = _bench_streaming.drop_page_cache


def newest_sluice():
    bins = sorted(ROOT.glob("build*/engine/sluice"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not bins:
        sys.exit("no build*/engine/sluice: build first (scripts/build.sh)")
    return str(bins[0])


def make_requests(path, n, prompt_range, output_range, seed):
    rng = random.Random(seed)
    reqs = []
    for i in range(n):
        prompt = [rng.randint(1000, 100000) for _ in range(rng.randint(*prompt_range))]
        reqs.append({"custom_id": f"bench-{i}", "method": "POST", "url": "/v1/completions",
                     "body": {"prompt": prompt, "max_tokens": rng.randint(*output_range), "temperature": 0,
                              "ignore_eos": True}})
    with open(path, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    return reqs


def run_sluice(args, sluice, reqs_path, out_dir, cap, name="sluice", extra=(), max_seqs=None):
    out = out_dir / f"{name}-results.jsonl"
    stats = out_dir / f"{name}-stats.jsonl"
    for p in (out, stats):
        p.unlink(missing_ok=True)
    ram = cap - (768 << 20)
    cmd = [sluice, "batch", "-m", args.model, "-i", str(reqs_path), "-o", str(out), "-t", str(args.threads),
           "--max-seqs", str(max_seqs or args.max_seqs), "--ram", str(ram), "--stats-json", str(stats),
           "--progress-interval", "60"] + args.sluice_arg + list(extra)
    drop_page_cache()
    with open(out_dir / f"{name}.log", "w") as log:
        proc, info = run_capped(cmd, cap, capture_stdout=False, stderr=log, name_hint="bench_batch_sluice")
    if proc.returncode != 0:
        sys.exit(f"sluice batch failed ({proc.returncode}); see {out_dir / (name + '.log')}")
    summary = [json.loads(l)["summary"] for l in open(stats) if '"summary"' in l][-1]
    return summary, info


def server_pid(wrapper_pid):
    # memcap.py's child is the server.
    try:
        kids = pathlib.Path(f"/proc/{wrapper_pid}/task/{wrapper_pid}/children").read_text().split()
        return int(kids[0]) if kids else None
    except OSError:
        return None


def read_bytes(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_llama(args, reqs, out_dir, cap):
    ctx = args.prompt_max + args.output_max + 8
    port = 18080 + os.getpid() % 1000
    cmd = [sys.executable, str(ROOT / "scripts" / "memcap.py"), "--memory-max", args.memory_max,
           "--report", str(out_dir / "llama-memcap.json"), "--", args.llama_server, "-m", args.model,
           "-t", str(args.threads), "-np", str(args.slots), "-c", str(ctx * args.slots), "--host", "127.0.0.1",
           "--port", str(port), "-b", "512", "--no-warmup",
           # CPU_REPACK buffers refuse some of deepseek2's ops and copy the model into RAM (DESIGN.md)
           "--no-repack"]
    drop_page_cache()
    log = open(out_dir / "llama-server.log", "w")
    wrapper = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if wrapper.poll() is not None:
                sys.exit(f"llama-server exited; see {out_dir / 'llama-server.log'}")
            time.sleep(2)
        pid = server_pid(wrapper.pid)
        bytes0 = read_bytes(pid) if pid else 0
        work = queue.Queue()
        for r in reqs:
            work.put(r)
        # Streamed, so that a run cut at --peer-timeout still counts the tokens it made (a request
        # of 64-256 tokens among 16 slots at ~0.2 tokens/s takes hours to finish): with
        # timings_per_token every chunk carries the request's tokens so far (timings.predicted_n;
        # counting chunks would miss tokens whose text the server holds back, e.g. a partial
        # UTF-8 sequence).
        done, lock = [], threading.Lock()
        generated = [0]
        stop_at = time.time() + args.peer_timeout

        def client():
            while time.time() < stop_at:
                try:
                    r = work.get_nowait()
                except queue.Empty:
                    return
                body = dict(r["body"], cache_prompt=False, stream=True, timings_per_token=True)
                req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                n = 0
                with urllib.request.urlopen(req, timeout=args.peer_timeout) as resp:
                    for line in resp:
                        if time.time() >= stop_at:
                            return
                        line = line.strip()
                        if not line.startswith(b"data:") or line == b"data: [DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        now = chunk.get("timings", {}).get("predicted_n")
                        if now is None and chunk.get("choices") and chunk["choices"][0].get("finish_reason") is None:
                            now = n + 1  # a server without per-token timings: a chunk per token
                        if now is not None and now > n:
                            with lock:
                                generated[0] += now - n
                            n = now
                with lock:
                    done.append(n)

        t0 = time.time()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.slots)]
        for t in threads:
            t.start()
        # Tokens so far every 10 s: the rate once every slot is past its first prompt (the second
        # half of a window cut at --peer-timeout) says more than the window's average.
        samples = []
        while any(t.is_alive() for t in threads) and time.time() < stop_at + 60:
            with lock:
                samples.append((time.time() - t0, generated[0]))
            time.sleep(min(10.0, args.peer_timeout / 30, max(0.1, stop_at + 60 - time.time())))
        for t in threads:
            t.join(timeout=1)
        seconds = time.time() - t0
        read = (read_bytes(pid) - bytes0) if pid else 0
    finally:
        # memcap.py does not pass a signal on to its child: the server is stopped by its own pid
        # (left running, it computed beside the roofline measurement that follows).
        child = server_pid(wrapper.pid)
        if child:
            try:
                os.kill(child, signal.SIGTERM)
            except OSError:
                pass
        wrapper.terminate()
        try:
            wrapper.wait(timeout=30)
        except subprocess.TimeoutExpired:
            wrapper.kill()
        log.close()
    with lock:
        tokens = generated[0]
    seconds = min(seconds, args.peer_timeout)
    half = [(t, n) for t, n in samples if seconds / 2 <= t <= seconds + 1]
    late_rate = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) if len(half) > 1 and half[-1][0] > half[0][0] else 0
    return {"requests_done": len(done), "requests": len(reqs), "output_tokens": tokens, "seconds": seconds,
            "output_tokens_per_s": tokens / seconds if seconds else 0, "bytes_read": read,
            "gb_read_per_output_token": read / 1e9 / tokens if tokens else 0, "slots": args.slots,
            "timed_out": len(done) < len(reqs), "second_half_tokens_per_s": late_rate, "samples": samples}


def roofline(args, sluice, reqs, cap, out_dir, max_seqs, step_tokens):
    io = json.loads(subprocess.run([sluice, "bench-io", args.model, "--bs", "4M", "--qd", "8", "--rounds", "2",
                                    "--seconds", "5", "--no-fio", "--json"], capture_output=True, text=True,
                                   check=True).stdout.strip().splitlines()[-1])
    rates = {m["method"]: m["gb_per_s_median"] for m in io["methods"]}
    rate = rates.get("sluice io_uring") or rates.get("sluice pread pool")
    drop_page_cache()
    proc, _ = run_capped([sluice, "bench", "-m", args.model, "--json", "--threads", str(args.threads),
                          # the GEMM rate at the token counts of a full step (experts see step x top_k / n_experts)
                          "--prompt-lengths", str(step_tokens), "-b", str(step_tokens), "--decode", "1",
                          "--batch-sizes", "1",
                          "--ram", str(cap - (768 << 20))], cap, capture_stdout=True, stderr=subprocess.DEVNULL,
                         name_hint="bench_batch_roofline")
    bench = json.loads(proc.stdout)
    r = bench["roofline"]
    gemm = {g["what"]: g["flops_per_s"] for g in r["gemm"]}
    streamed = r["layer_bytes"] - r["resident_weight_bytes"]
    json.dump({"bench_io": io, "bench": bench}, open(out_dir / "roofline-inputs.json", "w"), indent=1)
    return roofline_of(reqs, r, gemm, rate, max_seqs)


def roofline_of(reqs, r, gemm, rate, max_seqs):
    dense_rate = gemm.get("dense", gemm["expert"])
    streamed = r["layer_bytes"] - r["resident_weight_bytes"]
    prompt = sum(len(q["body"]["prompt"]) for q in reqs)
    output = sum(q["body"]["max_tokens"] for q in reqs)
    # A token at position p attends over p positions: a request of n positions computes n^2/2.
    positions = sum((len(q["body"]["prompt"]) + q["body"]["max_tokens"]) ** 2 / 2 for q in reqs)
    attention = positions * r.get("attention_flops_per_token_per_position", 0) / dense_rate
    compute = (prompt + output) * (r["dense_flops_per_token"] / dense_rate +
                                   r["expert_flops_per_token"] / gemm["expert"]) + \
        output * r["head_flops_per_sequence"] / dense_rate + attention
    passes = max(max(q["body"]["max_tokens"] for q in reqs), -(-output // max_seqs))
    reading = passes * streamed / (rate * 1e9)
    return {"disk_gb_per_s": rate, "streamed_gb_per_pass": streamed / 1e9, "passes": passes, "max_seqs": max_seqs,
            "compute_s": compute, "attention_s": attention, "read_s": reading, "output_tokens": output,
            "output_tokens_per_s": output / max(compute, reading)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "bench-v3-5L-q4k.gguf"))
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--prompt", default="64,512", help="prompt lengths, min,max")
    ap.add_argument("--output", default="64,256", help="output lengths, min,max")
    ap.add_argument("--memory-max", default="8G")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-seqs", type=int, default=256, help="sluice: requests in flight")
    ap.add_argument("--slots", type=int, default=16, help="llama-server -np and concurrent clients")
    ap.add_argument("--sluice", default=os.environ.get("SLUICE_BIN") or None)
    ap.add_argument("--sluice-arg", action="append", default=[], help="extra sluice batch option (repeatable)")
    ap.add_argument("--llama-server", default=str(ROOT / "build-peer" / "llama-build" / "bin" / "llama-server"),
                    help="built with: pip download llama-cpp-python --no-binary :all: --no-deps; cmake -S "
                         "<sdist>/vendor/llama.cpp -B build-peer/llama-build -DLLAMA_BUILD_SERVER=ON; "
                         "cmake --build build-peer/llama-build --target llama-server -j2")
    ap.add_argument("--peer-timeout", type=float, default=3600, help="seconds before the peer's run is cut")
    ap.add_argument("--spill-cache-ram", help="also run sluice with --cache-ram SIZE (latent caches spilled)")
    ap.add_argument("--spill-max-seqs", type=int, help="the spilled run's --max-seqs (default: --max-seqs)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--reuse-sluice", help="a previous run's directory: take its requests and sluice result")
    ap.add_argument("--skip-roofline", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.prompt_min, args.prompt_max = map(int, args.prompt.split(","))
    args.output_min, args.output_max = map(int, args.output.split(","))
    sluice = args.sluice or newest_sluice()
    cap = parse_bytes(args.memory_max)
    out_dir = pathlib.Path(args.reuse_sluice) if args.reuse_sluice else \
        ROOT / "bench-results" / time.strftime("batch-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    reqs_path = out_dir / "requests.jsonl"
    reqs = make_requests(reqs_path, args.requests, (args.prompt_min, args.prompt_max),
                         (args.output_min, args.output_max), args.seed)
    print(f"job: {args.requests} requests, prompts {args.prompt}, outputs {args.output}; cap {args.memory_max}, "
          f"{args.threads} threads; sluice {sluice}; results in {out_dir}", flush=True)
    if args.reuse_sluice:
        s = [json.loads(l)["summary"] for l in open(out_dir / "sluice-stats.jsonl") if '"summary"' in l][-1]
        s_mem = {}
    else:
        s, s_mem = run_sluice(args, sluice, reqs_path, out_dir, cap)
    print(f"sluice done: {s['output_tokens_per_s']:.2f} output tokens/s", flush=True)
    spill, spill_mem = None, {}
    if args.spill_cache_ram:
        spill, spill_mem = run_sluice(args, sluice, reqs_path, out_dir, cap, "sluice-spill",
                              ["--cache-ram", args.spill_cache_ram, "--spill-dir", str(out_dir)],
                              max_seqs=args.spill_max_seqs)
        print(f"sluice with spill done: {spill['output_tokens_per_s']:.2f} output tokens/s", flush=True)
    peer = None if args.skip_peer else run_llama(args, reqs, out_dir, cap)
    roof = None if args.skip_roofline else roofline(args, sluice, reqs, cap, out_dir, s["max_sequences"],
                                                        s["max_step_tokens"])
    spill_roof = None
    if roof and spill:
        inputs = json.load(open(out_dir / "roofline-inputs.json"))["bench"]["roofline"]
        spill_roof = roofline_of(reqs, inputs, {g["what"]: g["flops_per_s"] for g in inputs["gemm"]},
                                 roof["disk_gb_per_s"], spill["max_sequences"])
    result = {"job": vars(args), "sluice": s, "sluice_memory": s_mem, "sluice_spill": spill, "sluice_spill_memory": spill_mem,
              "llama_cpp": peer,
              "roofline": roof, "spill_roofline": spill_roof}
    json.dump(result, open(out_dir / "result.json", "w"), indent=1)

    print(f"\n{'':34} {'sluice':>12} {'llama.cpp':>12} {'ratio':>8}")
    def row(name, a, b, fmt="{:.2f}"):
        bs = fmt.format(b) if b is not None else "-"
        ratio = f"{a / b:.2f}x" if b else "-"
        print(f"{name:34} {fmt.format(a):>12} {bs:>12} {ratio:>8}")
    row("output tokens/s", s["output_tokens_per_s"], peer and peer["output_tokens_per_s"])
    row("wall seconds", s["seconds"], peer and peer["seconds"], "{:.0f}")
    row("GB read per output token", s["gb_read_per_output_token"], peer and peer["gb_read_per_output_token"], "{:.3f}")
    print(f"sluice's batch: up to {s['max_sequences']} sequences in flight, mean {s['mean_sequences_per_step']:.1f} "
          f"sequences and {s['mean_tokens_per_step']:.0f} tokens per step over {s['steps']} steps; peak memory "
          f"{(s_mem.get('peak_bytes') or 0) / 2**30:.2f} GiB of {args.memory_max}")
    if spill:
        print(f"sluice with --cache-ram {args.spill_cache_ram}: {spill['output_tokens_per_s']:.2f} output tokens/s, "
              f"{spill['cache_resident_layers']} layers' caches in memory, "
              f"{spill['spill_bytes_read'] / 1e9:.2f} GB of caches read back, "
              f"{spill['spill_bytes_written'] / 1e9:.2f} GB written, up to {spill['max_sequences']} sequences in "
              f"flight, mean {spill['mean_sequences_per_step']:.1f} sequences and {spill['mean_tokens_per_step']:.0f} "
              f"tokens per step over {spill['steps']} steps, {spill['gb_read_per_output_token']:.3f} GB read per "
              f"output token, peak memory {(spill_mem.get('peak_bytes') or 0) / 2**30:.2f} GiB of {args.memory_max}")
    if peer:
        print(f"llama.cpp: -np {args.slots}, {peer['requests_done']}/{peer['requests']} requests done"
              f"{' (cut at --peer-timeout)' if peer['timed_out'] else ''}")
        if peer["timed_out"]:
            # The same window of sluice's run: the output tokens of the steps that ended within it
            # (decode tokens; each request's first token, made by its last prompt chunk, is left out).
            t = made = 0.0
            for line in open(out_dir / "sluice-stats.jsonl"):
                step = json.loads(line)
                if "summary" in step:
                    continue
                t += step["seconds"]
                if t > peer["seconds"]:
                    break
                made += step["decode_tokens"]
            print(f"first {peer['seconds']:.0f} s of each: sluice {made:.0f} output tokens ({made / peer['seconds']:.2f}/s, "
                  f"at least), llama.cpp {peer['output_tokens']} ({peer['output_tokens_per_s']:.2f}/s): "
                  f"{made / max(peer['output_tokens'], 1):.2f}x; llama.cpp over the window's second half "
                  f"{peer['second_half_tokens_per_s']:.2f}/s, sluice over its whole job {s['output_tokens_per_s']:.2f}/s: "
                  f"{s['output_tokens_per_s'] / max(peer['second_half_tokens_per_s'], 1e-9):.2f}x")
    for name, run, rf in (("sluice", s, roof), ("sluice with spill", spill, spill_roof)):
        if run and rf:
            print(f"roofline at max-seqs {rf['max_seqs']}: {rf['output_tokens_per_s']:.2f} output tokens/s (compute "
                  f"{rf['compute_s']:.0f} s, {rf['attention_s']:.0f} of it attention; reading {rf['passes']} passes x "
                  f"{rf['streamed_gb_per_pass']:.1f} GB at {rf['disk_gb_per_s']:.2f} GB/s = {rf['read_s']:.0f} s); "
                  f"{name} at {run['output_tokens_per_s'] / rf['output_tokens_per_s']:.2f} of it")


if __name__ == "__main__":
    main()
