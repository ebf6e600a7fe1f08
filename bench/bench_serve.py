#!/usr/bin/env python3
"""sluice serve against llama.cpp's llama-server under concurrent clients, side by side in one run.

  python3 bench/bench_serve.py                        # 8 and 32 clients, the mix below
  python3 bench/bench_serve.py --clients 4 --requests-per-client 1 --output 4,4   # a smoke run

The mix (fixed by --seed): every client sends --requests-per-client streamed /v1/completions
requests one after another; each prompt is random token ids (length uniform in --prompt), each
generates exactly max_tokens (uniform in --output; greedy, ignore_eos). Both servers load the
5-layer DeepSeek-V3-shaped Q4_K GGUF inside the same memory cgroup (scripts/memcap.py,
--memory-max 8G) with --threads 2, the page cache dropped before each start:
  sluice:    `sluice serve --max-seqs CLIENTS --max-queue CLIENTS --ram <cap - 768M>`
  llama.cpp: `llama-server -np CLIENTS -c CLIENTS x context --no-repack` (see bench_batch.py for
             how it is built), requests with cache_prompt false.
The engines alternate per client count (sluice 8, llama 8, sluice 32, llama 32). Reported per
engine and client count: total output tokens/s (all tokens over the wall time from the first
request to the last answer), median and p95 time to first token (request sent -> first event with
text), requests answered, and the sluice / llama.cpp ratios. JSON goes to bench-results/.
Timing on the shared 2-core machines is noisy (other engineers build and benchmark on the same
cores and disk): compare within one run, and say so when quoting.
"""
import argparse
import http.client
import importlib.util
import json
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from memcap import parse_bytes  # noqa: E402

# The batch benchmark's helpers: the newest sluice build, the server under memcap.py, and the
# cold start (drop the page cache before each engine).
_spec = importlib.util.spec_from_file_location("bench_batch", ROOT / "bench" / "bench_batch.py")
_bench_batch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_batch)
drop_page_cache = _bench_batch.drop_page_cache
newest_sluice = _bench_batch.newest_sluice
server_pid = _bench_batch.server_pid


def make_mix(n_clients, per_client, prompt_range, output_range, seed):
    rng = random.Random(seed)
    return [[{"prompt": [rng.randint(1000, 100000) for _ in range(rng.randint(*prompt_range))],
              "max_tokens": rng.randint(*output_range)} for _ in range(per_client)] for _ in range(n_clients)]


def percentile(values, q):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def stream_request(port, body, timeout):
    """One streamed completion: (seconds to the first text, seconds to the end, output tokens)."""
    t0 = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:200]!r}")
    ttft, n_text, usage = None, 0, None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]["completion_tokens"]
        for choice in event.get("choices") or []:
            if choice.get("text"):
                n_text += 1
                if ttft is None:
                    ttft = time.time() - t0
    conn.close()
    end = time.time() - t0
    return ttft if ttft is not None else end, end, usage if usage is not None else n_text


def run_clients(port, mix, extra_body, timeout):
    records, errors, lock = [], [], threading.Lock()

    def client(requests):
        for r in requests:
            body = {"prompt": r["prompt"], "max_tokens": r["max_tokens"], "temperature": 0, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}, **extra_body}
            try:
                ttft, seconds, tokens = stream_request(port, body, timeout)
                with lock:
                    records.append({"ttft": ttft, "seconds": seconds, "tokens": tokens, "asked": r["max_tokens"]})
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(str(e))

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(reqs,)) for reqs in mix]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    tokens = sum(r["tokens"] for r in records)
    ttfts = [r["ttft"] for r in records]
    return {"clients": len(mix), "requests": sum(len(m) for m in mix), "answered": len(records),
            "errors": errors[:5], "n_errors": len(errors), "output_tokens": tokens,
            "tokens_asked": sum(r["asked"] for r in records), "seconds": wall,
            "output_tokens_per_s": tokens / wall if wall else 0, "ttft_median_s": statistics.median(ttfts) if ttfts else 0,
            "ttft_p95_s": percentile(ttfts, 0.95), "records": records}


def scrape_metrics(port):
    """sluice's /metrics as {name: value} (what bounded the run: steps, bytes read, overlap)."""
    out = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    key, value = line.rsplit(" ", 1)
                    out[key] = float(value)
    except OSError:
        pass
    return out


def wait_health(port, proc, deadline_s, log_path):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}); see {log_path}")
        time.sleep(1)
    sys.exit(f"the server did not become ready in {deadline_s} s; see {log_path}")


def run_engine(name, server_cmd, port, mix, args, out_dir, extra_body):
    report = out_dir / f"{name}-memcap.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "memcap.py"), "--memory-max", args.memory_max, "--report",
           str(report), "--"] + server_cmd
    drop_page_cache()
    log_path = out_dir / f"{name}.log"
    log = open(log_path, "w")
    print(f"{name}: {' '.join(server_cmd)}", flush=True)
    t_start = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_health(port, proc, 1800, log_path)
        load_s = time.time() - t_start
        result = run_clients(port, mix, extra_body, args.request_timeout)
        result["metrics"] = scrape_metrics(port) if name.startswith("sluice") else {}
    finally:
        # SIGTERM to the server itself (memcap.py's child): the wrapper would die and leave it running.
        child = server_pid(proc.pid)
        if child:
            os.kill(child, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            if child:
                os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait()
        log.close()
    result["load_s"] = load_s
    result["exit_code"] = proc.returncode
    try:
        result["memory"] = json.loads(report.read_text())
    except (OSError, ValueError):
        result["memory"] = {}
    print(f"{name}: {result['output_tokens_per_s']:.2f} output tokens/s, TTFT median {result['ttft_median_s']:.1f} s "
          f"p95 {result['ttft_p95_s']:.1f} s, {result['answered']}/{result['requests']} answered in "
          f"{result['seconds']:.0f} s", flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "bench-v3-5L-q4k.gguf"))
    ap.add_argument("--clients", default="8,32", help="concurrent client counts, comma-separated")
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--prompt", default="32,64", help="prompt lengths, min,max")
    ap.add_argument("--output", default="16,16", help="output lengths, min,max")
    ap.add_argument("--memory-max", default="8G")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sluice", default=os.environ.get("SLUICE_BIN") or None)
    ap.add_argument("--sluice-arg", action="append", default=[], help="extra sluice serve option (repeatable)")
    ap.add_argument("--llama-server", default=str(ROOT / "build-peer" / "llama-build" / "bin" / "llama-server"),
                    help="llama.cpp's server, built as bench_batch.py --help says")
    ap.add_argument("--request-timeout", type=float, default=7200)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    prompt = tuple(map(int, args.prompt.split(",")))
    output = tuple(map(int, args.output.split(",")))
    context = prompt[1] + output[1] + 8
    sluice = args.sluice or newest_sluice()
    cap = parse_bytes(args.memory_max)
    if not args.skip_peer and not os.access(args.llama_server, os.X_OK):
        sys.exit(f"{args.llama_server}: no llama-server (see --llama-server, or --skip-peer)")
    out_dir = ROOT / "bench-results" / time.strftime("serve-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"mix: {args.requests_per_client} request(s) per client, prompts {args.prompt}, outputs {args.output}; "
          f"cap {args.memory_max}, {args.threads} threads; sluice {sluice}; results in {out_dir}", flush=True)
    results = {"job": vars(args), "runs": []}
    port = 19000 + os.getpid() % 1000
    for n in map(int, args.clients.split(",")):
        mix = make_mix(n, args.requests_per_client, prompt, output, args.seed)
        s = run_engine(f"sluice-{n}", [sluice, "serve", "-m", args.model, "--port", str(port), "-t", str(args.threads),
                                       "--max-seqs", str(n), "--max-queue", str(n), "--context", str(context),
                                       "--ram", str(cap - (768 << 20))] + args.sluice_arg,
                       port, mix, args, out_dir, {})
        peer = None
        if not args.skip_peer:
            peer = run_engine(f"llama-{n}", [args.llama_server, "-m", args.model, "-t", str(args.threads), "-np", str(n),
                                             "-c", str(context * n), "--host", "127.0.0.1", "--port", str(port),
                                             "-b", "512", "--no-warmup", "--no-repack"],
                              port, mix, args, out_dir, {"cache_prompt": False})
        results["runs"].append({"clients": n, "sluice": s, "llama_cpp": peer})
        json.dump(results, open(out_dir / "result.json", "w"), indent=1)

    print(f"\n{'clients':>7} {'':24} {'sluice':>10} {'llama.cpp':>10} {'ratio':>7}")
    for run in results["runs"]:
        s, p = run["sluice"], run["llama_cpp"]

        def row(label, key, fmt, higher_is_better=True):
            a = s[key]
            b = p[key] if p else None
            ratio = "-" if not b or not a else f"{(a / b if higher_is_better else b / a):.2f}x"
            print(f"{run['clients']:>7} {label:24} {fmt.format(a):>10} {fmt.format(b) if b is not None else '-':>10} "
                  f"{ratio:>7}")
        row("output tokens/s", "output_tokens_per_s", "{:.2f}")
        row("TTFT median (s)", "ttft_median_s", "{:.1f}", False)
        row("TTFT p95 (s)", "ttft_p95_s", "{:.1f}", False)
        row("wall (s)", "seconds", "{:.0f}", False)
        print(f"{'':>7} {'answered':24} {s['answered']:>7}/{s['requests']:<2} "
              f"{(str(p['answered']) + '/' + str(p['requests'])) if p else '-':>10}")
        m = s.get("metrics") or {}
        if m.get("sluice_steps_total"):
            steps = m["sluice_steps_total"]
            print(f"{'':>7} sluice: {steps:.0f} steps, {m['sluice_read_gigabytes_total']:.1f} GB of weights read "
                  f"({m['sluice_read_gigabytes_total'] / steps:.1f} GB a step), step time {m['sluice_step_seconds_total']:.0f} s "
                  f"= reading {m['sluice_step_read_seconds_total']:.0f} s / computing "
                  f"{m['sluice_step_compute_seconds_total']:.0f} s, overlap {m['sluice_step_overlap_efficiency']:.2f}, "
                  f"expert cache hits {m['sluice_expert_cache_hit_ratio']:.2f}")
        peak = lambda r: (r or {}).get("memory", {}).get("peak_bytes") or 0  # noqa: E731
        print(f"{'':>7} {'peak memory (GiB)':24} {peak(s) / 2**30:>10.2f} {peak(p) / 2**30 if p else 0:>10.2f}")
    print("(ratio: sluice over llama.cpp for tokens/s, llama.cpp over sluice for times: > 1 favours sluice)")


if __name__ == "__main__":
    main()
