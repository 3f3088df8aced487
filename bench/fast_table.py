#!/usr/bin/env python3
"""The table of bench/fast_bench.sh: per seed and arm, the final model's mAP (its own training
run's last evaluation on the demo's valid list), FLOPs reduction, and speed-up on onnxruntime
CPU over the baseline — every final model of every seed and the baseline timed interleaved in
one run — and their ratio; then the mean over seeds.

  .venv/bin/python bench/fast_table.py --base runs/demo27 --out-dir runs/fast --seeds 0 1 2 \
      --img-size 256 --out bench/results/fast.md
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from yolo_slim.analysis.cost import model_flops  # noqa: E402
from yolo_slim.core.errors import atomic_write_bytes  # noqa: E402
from yolo_slim.deploy.ort_bench import cpu_isa, load_average  # noqa: E402
from yolo_slim.deploy.ort_latency import models_latency  # noqa: E402
from yolo_slim.nn.weights import load_model  # noqa: E402

ARMS = {"ours": "demo recipe: prox to a measured 3x speed-up, latency weights, free cut, KD fine-tuning",
        "flops": "FLOPs recipe (the demo's before): prox to 25% of the FLOPs, uniform weights",
        "older": "older tools: L1 subgradient, |γ| cut to ours' measured speed-up, KD fine-tuning",
        "scratch": "ours' slim cfg from fresh weights, the whole epoch budget"}


def last_map(results_csv: str) -> tuple[float, float]:
    with open(results_csv) as f:
        rows = [r for r in csv.DictReader(f) if r.get("map50")]
    return float(rows[-1]["map50"]), float(rows[-1]["map"])


def arm_model(run: str, arm: str) -> tuple[str, str]:
    """(model file, results.csv) of an arm's final model."""
    if arm == "scratch":
        return os.path.join(run, "last.pt"), os.path.join(run, "results.csv")
    return os.path.join(run, "finetune", "last.pt"), os.path.join(run, "finetune", "results.csv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out", default="bench/results/fast.md")
    a = p.parse_args()
    hw = (a.img_size, a.img_size)
    models = {"baseline": load_model(None, os.path.join(a.base, "baseline", "best.pt"))}
    scores = {"baseline": last_map(os.path.join(a.base, "baseline", "results.csv"))}
    for s in a.seeds:
        for arm in ARMS:
            path, res = arm_model(os.path.join(a.out_dir, f"{arm}-s{s}"), arm)
            if os.path.exists(path):
                models[f"{arm}-s{s}"] = load_model(None, path)
                scores[f"{arm}-s{s}"] = last_map(res)
    load = load_average()
    lat = models_latency(models, hw, 1, 2, a.rounds, ref="baseline")
    f0 = model_flops(models["baseline"], hw)
    rows, per_arm = [], {}
    for name, m in models.items():
        fred, sp = f0 / model_flops(m, hw), 1 / lat[name]["ratio_median"]
        m50, m95 = scores[name]
        rows.append(f"| {name} | {m50:.3f} | {m95:.3f} | {fred:.2f}x | {sp:.2f}x | {sp / fred:.2f} | "
                    f"{lat[name]['median_ms']:.2f} ms |")
        per_arm.setdefault(name.split("-s")[0], []).append((m50, m95, fred, sp, sp / fred))
    mean = [f"| {arm} | " + " | ".join(f"{v:.3f}" if i < 2 else f"{v:.2f}" for i, v in
                                      enumerate(np.mean(vals, 0))) + f" | {len(vals)} |"
            for arm, vals in per_arm.items()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    isa = cpu_isa()
    text = "\n".join([
        "# Fast by construction: the demo recipe and its controls (issue 27)", "",
        f"`bash bench/fast_bench.sh` + `python bench/fast_table.py --base {a.base} --out-dir {a.out_dir} "
        f"--seeds {' '.join(map(str, a.seeds))}`; commit {commit}, {datetime.date.today()}, "
        f"{isa['cpu']} ({isa['cores']} cores), onnxruntime CPU 2 threads, batch 1, {a.img_size} px; "
        f"load average when timing started {load}. One shared baseline; each arm's seed is its "
        "sparse + fine-tuning (or from-scratch) seed.", "",
        *[f"- **{k}**: {v}" for k, v in ARMS.items()], "",
        "mAP: the run's last evaluation on the valid list (200 images). Speed-up: median per-round "
        f"ratio to the baseline, every model below timed interleaved in one run ({a.rounds} rounds). "
        "Ratio = speed-up ÷ FLOPs reduction.", "",
        "| model | mAP@0.5 | mAP@0.5:0.95 | FLOPs reduction | speed-up | ratio | median |",
        "| --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        "Mean over seeds:", "",
        "| arm | mAP@0.5 | mAP@0.5:0.95 | FLOPs reduction | speed-up | ratio | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- |", *mean, ""])
    atomic_write_bytes(a.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
