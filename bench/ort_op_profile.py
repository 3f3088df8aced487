#!/usr/bin/env python3
"""Where an ONNX model's onnxruntime CPU time goes, per operator type: onnxruntime's own
profiler over N runs (batch 1), summed per op type and divided by N. Shows what a channel cut
cannot shrink (pools, reorders, concat, the decode tail) next to what it can (Conv).

  python bench/ort_op_profile.py A.onnx [B.onnx ...] [--threads 2] [--runs 30]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort


def profile(path: str, threads: int, runs: int) -> tuple[dict[str, float], float]:
    """(ms per run per op type, median model_run ms) over `runs` profiled runs after 5 warm-up
    runs in an unprofiled session of the same file (the profiled session's first run, which
    pays one-time costs, is dropped)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "p")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
    for _ in range(runs + 1):
        s.run(None, {inp.name: x})
    with open(s.end_profiling()) as f:
        events = json.load(f)
    runs_ev = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    first_end = runs_ev[0]["ts"] + runs_ev[0]["dur"]
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first_end:
            per_op[e["args"].get("op_name", "?")] += e["dur"]
    n = len(runs_ev) - 1
    return {k: v / n / 1e3 for k, v in per_op.items()}, float(np.median([e["dur"] for e in runs_ev[1:]])) / 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    a = p.parse_args()
    res = {f: profile(f, a.threads, a.runs) for f in a.files}
    ops = sorted({k for r, _ in res.values() for k in r}, key=lambda k: -max(r.get(k, 0) for r, _ in res.values()))
    print("| op type | " + " | ".join(f"`{os.path.basename(f)}` ms/run (share)" for f in a.files) + " |")
    print("|---|" + "---|" * len(a.files))
    for k in ops:
        print(f"| {k} | " + " | ".join(f"{r.get(k, 0):.2f} ({r.get(k, 0) / sum(r.values()):.0%})" for r, _ in res.values()) + " |")
    print("| all nodes | " + " | ".join(f"{sum(r.values()):.2f}" for r, _ in res.values()) + " |")
    print("| model_run | " + " | ".join(f"{t:.2f}" for _, t in res.values()) + " |")


if __name__ == "__main__":
    main()
