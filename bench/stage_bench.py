#!/usr/bin/env python3
"""Side-by-side training benchmarks that start from a pipeline run's checkpoints.

  # issue 4: baseline vs the three sparsity schedules, same epochs, from the baseline checkpoint
  python bench/stage_bench.py sparsity --run runs/demo --data data/shapes/shapes.data --epochs 4
  # issue 7: the pruned model fine-tuned with --kd none / hinton / chen, same epochs
  python bench/stage_bench.py distill --run runs/demo --data data/shapes/shapes.data --epochs 4

Each variant is one training run (train_sparse.py / distill.py, the same flags but the one
compared); the table (mAP@0.5, mAP@0.5:0.95, share of prunable |γ| < 0.01, wall time) is
printed and written to --out as markdown.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.harness import timed  # noqa: E402


def run(cmd: list[str]) -> float:
    """Wall seconds of one training run."""
    print("$", " ".join(cmd), flush=True)
    return timed(lambda: subprocess.run(cmd, cwd=ROOT, check=True))[1]


def last_row(out: str) -> dict[str, str]:
    with open(os.path.join(out, "results.csv")) as f:
        return list(csv.DictReader(f))[-1]


def gamma_share(weights: str) -> float:
    """Share of |γ| < 0.01 over the convs `slim` may prune, measured on a checkpoint."""
    import torch

    from yolo_slim.analysis.graph import prunable_convs
    from yolo_slim.nn.weights import model_from_checkpoint
    m = model_from_checkpoint(weights)
    g = torch.cat([m.module_list[i].bn.weight.detach().abs().flatten()
                   for i in prunable_convs(m.module_defs, "shortcut")])
    return float((g < 0.01).float().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["sparsity", "distill"])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--data", default="data/shapes/shapes.data")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--s", type=float, default=0.002)
    p.add_argument("--train-args", default="", help="extra flags for every run")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    py, out_root = sys.executable, os.path.join(a.run, f"bench_{a.what}")
    common = ["--data", a.data, "--epochs", str(a.epochs), "--img-size", str(a.img_size),
              "--workers", "1", "--no-progress", *a.train_args.split()]
    rows = []
    if a.what == "sparsity":
        base = os.path.join(a.run, "baseline", "best.pt")
        variants = [("no-sr", [])] + [
            (f"--sr {k}", ["-sr", "--s", str(a.s), "--prune", "1", "--sparsity", k])
            for k in ("constant", "global-decay", "local-decay")]
        rows.append(("starting checkpoint", None, gamma_share(base), 0.0, base))
        for name, extra in variants:
            out = os.path.join(out_root, name.split()[-1])
            wall = run([py, "train_sparse.py", "--weights", base, *extra, *common, "--output-dir", out])
            rows.append((name, last_row(out), gamma_share(os.path.join(out, "last.pt")), wall, out))
    else:
        cfg = glob.glob(os.path.join(a.run, "pruned", "*.cfg"))[0]
        w = glob.glob(os.path.join(a.run, "pruned", "*.weights"))[0]
        teacher = os.path.join(a.run, "baseline", "best.pt")
        for kd in ("none", "hinton", "chen"):
            out = os.path.join(out_root, kd)
            t = [] if kd == "none" else ["--t-weights", teacher]
            wall = run([py, "distill.py", "--cfg", cfg, "--weights", w, "--kd", kd, *t, *common,
                        "--output-dir", out])
            rows.append((f"--kd {kd}", last_row(out), None, wall, out))
    lines = [f"Command: `python bench/stage_bench.py {' '.join(argv or sys.argv[1:])}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
             f"date {datetime.date.today()}; {a.epochs} epochs at {a.img_size} px per variant.", "",
             "| variant | mAP@0.5 | mAP@0.5:0.95 | prunable abs(γ) < 0.01 | wall |",
             "| --- | --- | --- | --- | --- |"]
    for name, r, share, wall, _ in rows:
        m50 = f"{float(r['map50']):.3f}" if r else "-"
        m = f"{float(r['map']):.3f}" if r else "-"
        sh = f"{share:.1%}" if share is not None else "-"
        lines.append(f"| {name} | {m50} | {m} | {sh} | {wall / 60:.1f} min |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
