#!/usr/bin/env python3
"""Draws a sluice --trace file (Chrome trace-event JSON) as a picture: one row per track (reads,
copies, device compute, host compute, waits), a bar per span, coloured by layer. The README's
trace picture is made with it; the trace itself opens in Perfetto (ui.perfetto.dev) or
chrome://tracing.

    python3 scripts/plot_trace.py trace.json out.png [--from-ms A --to-ms B]
"""
import argparse
import json

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("png")
    ap.add_argument("--from-ms", type=float, default=None, help="start of the window shown")
    ap.add_argument("--to-ms", type=float, default=None, help="end of the window shown")
    ap.add_argument("--title", default="sluice --trace")
    a = ap.parse_args()
    data = json.load(open(a.trace))
    names = {e["tid"]: e["args"]["name"] for e in data["traceEvents"] if e.get("ph") == "M" and e["name"] == "thread_name"}
    spans = [e for e in data["traceEvents"] if e.get("ph") == "X"]
    lo = a.from_ms * 1000 if a.from_ms is not None else min(e["ts"] for e in spans)
    hi = a.to_ms * 1000 if a.to_ms is not None else max(e["ts"] + e["dur"] for e in spans)
    order = [2, 4, 5, 1, 3]  # reads, copies, device compute, host compute, waits
    tracks = [t for t in order if any(e["tid"] == t for e in spans)]
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(12, 0.55 * len(tracks) + 1.2), dpi=110)
    for row, tid in enumerate(tracks):
        for e in spans:
            if e["tid"] != tid or e["ts"] + e["dur"] < lo or e["ts"] > hi:
                continue
            layer = e.get("args", {}).get("layer", -1)
            colour = "0.6" if layer < 0 else cmap(layer % 10)
            ax.barh(row, max(e["dur"], 1) / 1000, left=(e["ts"] - lo) / 1000, height=0.7, color=colour,
                    edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels([names.get(t, str(t)) for t in tracks])
    ax.invert_yaxis()
    ax.set_xlim(0, (hi - lo) / 1000)
    ax.set_xlabel("ms (colour: layer)")
    ax.set_title(a.title)
    fig.tight_layout()
    fig.savefig(a.png)


if __name__ == "__main__":
    main()
