"""Channel-pruning benchmark on yolov3-spp (random weights, no evaluation).

1. wall time of the whole prune_channels run (load .weights, masks, fold, compact, verification
   with three forwards at --img-size, write cfg/weights/pt/report/PNGs, reload check), per strategy;
2. params and FLOPs kept at --global-percent 0.5/0.8/0.9 for each strategy (masks + compaction,
   no verification).

  .venv/bin/python bench/prune_bench.py --cfg ../shared/darknet-cfg/AlexeyAB/yolov3-spp.cfg \
      --img-size 416 --threads 2 > bench/results/prune.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from netgen import randomize_bn  # noqa: E402

from bench.harness import timed  # noqa: E402

from yolo_slim.nn.model import build_model  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.prune.pipeline import run_channels as run  # noqa: E402
from yolo_slim.nn.weights import save_darknet_weights  # noqa: E402

STRATEGIES = ("normal", "shortcut", "slim")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cfg", default=str(ROOT.parent / "shared/darknet-cfg/AlexeyAB/yolov3-spp.cfg"))
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--percents", default="0.5,0.8,0.9")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(a.cfg).eval()
    randomize_bn(model, 0)  # |γ| uniform in [0, 1.5): no sparse training, so no natural gap
    hw = (a.img_size, a.img_size)
    print(f"# Channel pruning: {Path(a.cfg).name}, {a.img_size}x{a.img_size}, random weights\n")
    print(f"torch {torch.__version__}, {a.threads} threads\n")
    print("## Time of a full prune_channels run (--global-percent 0.5, no --data)\n")
    print("| strategy | wall s | max abs d vs folded | vs unfolded masked | reloaded |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        wts = os.path.join(tmp, "in.weights")
        save_darknet_weights(model, wts)
        for s in STRATEGIES:
            rep, dt, _ = timed(lambda: run(a.cfg, wts, os.path.join(tmp, s), PruneOptions(
                strategy=s, global_percent=0.5, img_size=hw), log=lambda *x: None))
            v = rep["verification"]
            print(f"| {s} | {dt:.1f} | {v['max_abs_vs_folded']:.2g} | "
                  f"{v['max_abs_vs_masked_unfolded']:.2g} | {v['max_abs_reloaded']:.2g} |")
    print("\n## Params and FLOPs kept\n")
    print("| strategy | --global-percent | threshold | params kept | FLOPs kept | masks+compact s |")
    print("|---|---|---|---|---|---|")
    for s in STRATEGIES:
        for pc in (float(x) for x in a.percents.split(",")):
            r, dt, _ = timed(lambda: prune_model(
                model, PruneOptions(strategy=s, global_percent=pc, img_size=hw), check=False))
            pr, fl = r.report["params"], r.report["flops"]
            print(f"| {s} | {pc} | {r.threshold:.4f} | {pr['after'] / pr['before']:.3f} "
                  f"({pr['after'] / 1e6:.1f}M) | {fl['after'] / fl['before']:.3f} "
                  f"({fl['after'] / 1e9:.1f} G) | {dt:.1f} |")


if __name__ == "__main__":
    main()
