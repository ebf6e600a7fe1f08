#!/usr/bin/env python3
"""Run a command inside a fresh memory cgroup with a hard limit, and report the group's peak
usage and how often the limit was hit. Shared by the speed benchmarks so that sluice and its peer
(llama.cpp) run under exactly the same cap.

  python3 scripts/memcap.py --memory-max 8G [--report FILE.json] -- CMD ARGS...   # as a wrapper
  from memcap import run_capped                                                  # as a module

Methods, in order:
  1. cgroup v2 (/sys/fs/cgroup/cgroup.controllers lists "memory"): <dir>/memory.max (+ swap.max 0)
  2. cgroup v1 (/sys/fs/cgroup/memory mounted): <dir>/memory.limit_in_bytes. Page cache of files
     the command reads (llama.cpp's mmapped model) is charged to the group, so clean file pages
     are reclaimed under the cap; O_DIRECT reads (sluice) bypass the page cache entirely.
  3. systemd-run --scope -p MemoryMax=... (only when systemd is PID 1; no peak figure).
On the project's dev machines (root, no systemd, cgroup v1 memory hierarchy mounted, the v2
"unified" tree without a memory controller) method 2 is the one that works.
The child joins the group before it execs, so everything it maps and allocates is charged there.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys


def parse_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().rstrip("B").rstrip("I")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _cgroup_v2_root():
    p = pathlib.Path("/sys/fs/cgroup")
    ctl = p / "cgroup.controllers"
    if ctl.exists() and "memory" in ctl.read_text().split():
        return p
    return None


def run_capped(argv, limit_bytes: int, capture_stdout=True, stderr=None, name_hint="sluice_bench"):
    """Runs argv under a memory limit. Returns (completed_process, info) where info is
    {"bytes", "method", "peak_bytes", "limit_hits"}. stdout is captured (text) when
    capture_stdout; stderr goes to `stderr` (a file object, or None to inherit)."""
    name = f"{name_hint}_{os.getpid()}_{os.urandom(3).hex()}"
    v2, v1 = _cgroup_v2_root(), pathlib.Path("/sys/fs/cgroup/memory")
    out = subprocess.PIPE if capture_stdout else None
    if v2 is not None or (v1 / "memory.limit_in_bytes").exists():
        if v2 is not None:
            cg = v2 / name
            cg.mkdir()
            (cg / "memory.max").write_text(str(limit_bytes))
            if (cg / "memory.swap.max").exists():
                (cg / "memory.swap.max").write_text("0")
            method = "cgroup v2 memory.max"
        else:
            cg = v1 / name
            cg.mkdir()
            (cg / "memory.limit_in_bytes").write_text(str(limit_bytes))
            method = "cgroup v1 memory.limit_in_bytes"
        procs = str(cg / "cgroup.procs")

        def join():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        try:
            r = subprocess.run(argv, stdout=out, stderr=stderr, text=True, preexec_fn=join)
            if v2 is not None:
                peak_file = cg / "memory.peak"
                peak = int(peak_file.read_text()) if peak_file.exists() else None
                events = dict(l.split() for l in (cg / "memory.events").read_text().splitlines())
                hits = int(events.get("max", 0))
            else:
                peak = int((cg / "memory.max_usage_in_bytes").read_text())
                hits = int((cg / "memory.failcnt").read_text())
        finally:
            # a group with no tasks left can be removed; its charged page cache moves to the parent
            try:
                cg.rmdir()
            except OSError:
                pass
    elif shutil.which("systemd-run") and subprocess.run(
            ["systemctl", "is-system-running"], capture_output=True, text=True).stdout.strip() in ("running", "degraded"):
        method, peak, hits = "systemd-run --scope MemoryMax", None, None
        r = subprocess.run(["systemd-run", "--scope", "-q", "-p", f"MemoryMax={limit_bytes}", "-p",
                            "MemorySwapMax=0"] + list(argv), stdout=out, stderr=stderr, text=True)
    else:
        raise SystemExit("no way to cap memory here: no cgroup v2 memory controller, no cgroup v1 memory "
                         "hierarchy at /sys/fs/cgroup/memory, and systemd is not running")
    return r, {"bytes": limit_bytes, "method": method, "peak_bytes": peak, "limit_hits": hits}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory-max", required=True, help="cap, e.g. 512M or 8G")
    ap.add_argument("--report", help="write the cap, method, peak and limit hits here as JSON")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given (put it after --)")
    r, info = run_capped(cmd, parse_bytes(args.memory_max), capture_stdout=False)
    info["exit_code"] = r.returncode
    text = json.dumps(info)
    if args.report:
        pathlib.Path(args.report).write_text(text + "\n")
    print(f"memcap: {text}", file=sys.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
