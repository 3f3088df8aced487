#!/usr/bin/env python3
"""Why side-by-side ORT timing in one process needs care (deploy/ort_bench.py): two ONNX files
timed alone and interleaved, with onnxruntime's default thread spinning, with spinning off, and
with `session.force_spinning_stop` (spin during a run, stop when it returns) — each with and
without an untimed warm run of the same file before every timed run.

  python bench/research/ort_interleave.py A.onnx B.onnx [--threads 2] [--rounds 40]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from yolo_slim.deploy.runtime import median_ms  # noqa: E402


def session(path: str, threads: int, mode: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if mode == "no-spin":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif mode == "stop-spinning":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bench(sessions: dict, rounds: int, warm: bool) -> dict[str, float]:
    feeds = {k: {s.get_inputs()[0].name: np.random.default_rng(0).random(
        [d if isinstance(d, int) else 1 for d in s.get_inputs()[0].shape], dtype=np.float32)}
        for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[k])
    t: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():  # warm: one untimed run of the same file first
            t[k].append(median_ms(lambda: s.run(None, feeds[k]), 1, int(warm)))
    return {k: round(statistics.median(v), 2) for k, v in t.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    a = p.parse_args()
    names = {f"f{i}": f for i, f in enumerate(a.files)}
    print("| spinning | warm run before each | " + " | ".join(f"{k} alone ms | {k} interleaved ms" for k in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for mode in ("default", "no-spin", "stop-spinning"):
        for warm in (False, True):
            alone = {k: bench({k: session(f, a.threads, mode)}, a.rounds, warm)[k] for k, f in names.items()}
            inter = bench({k: session(f, a.threads, mode) for k, f in names.items()}, a.rounds, warm)
            print(f"| {mode} | {'yes' if warm else 'no'} | " + " | ".join(f"{alone[k]} | {inter[k]}" for k in names) + " |")


if __name__ == "__main__":
    main()
