"""Layer-pruning benchmark on yolov3 (random weights, random BN γ; no evaluation).

For --shortcuts 0/8/12/16, without and with slim channel pruning (--global-percent 0.5) after the
layer pruning: depth (conv layers), params, FLOPs at --img-size, and CPU latency (PyTorch, eval,
no_grad, batch 1, median and min of --runs rounds, round-robin over the models
after one warm-up round). Pruning itself runs without verification
here (the tests cover correctness); one --shortcuts 12 run is verified at 64 px for the record.

  .venv/bin/python bench/layer_prune_bench.py --cfg cfg/yolov3.cfg --img-size 416 --threads 2 \
      > bench/results/layer_prune.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from netgen import randomize_bn  # noqa: E402

from yolo_slim.deploy.runtime import median_ms  # noqa: E402

from yolo_slim.nn.model import build_model  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.prune.layer_run import prune_layers_model  # noqa: E402
from yolo_slim.prune.layers import depth  # noqa: E402
from yolo_slim.analysis.cost import count_params, model_flops  # noqa: E402


@torch.no_grad()
def latencies_ms(models: list, hw: tuple[int, int], runs: int) -> list[list[float]]:
    """Round-robin over the models (one warm-up round, then `runs` rounds) so that the load of
    a shared machine drifting over time hits every model alike."""
    x = torch.rand(1, 3, *hw)
    times: list[list[float]] = [[] for _ in models]
    for r in range(runs + 1):
        for k, m in enumerate(models):
            ms = median_ms(lambda: m.eval()(x), 1, 0)  # one call: the rounds are the repeats
            if r:
                times[k].append(ms)
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cfg", default=str(ROOT / "cfg" / "yolov3.cfg"))
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--shortcuts", default="0,8,12,16")
    p.add_argument("--global-percent", type=float, default=0.5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(a.cfg).eval()
    randomize_bn(model, 0)  # |γ| uniform in [0, 1.5): no sparse training, so no natural gap
    hw = (a.img_size, a.img_size)
    base = {"params": count_params(model), "flops": model_flops(model, hw)}
    print(f"# Layer pruning: {Path(a.cfg).name}, {a.img_size}x{a.img_size}, random weights\n")
    print(f"torch {torch.__version__}, {a.threads} threads, latency = median (min) of {a.runs} "
          "round-robin runs (batch 1, eval, no_grad) after one warm-up round\n")
    rows, models = [], []
    for n in [int(s) for s in a.shortcuts.split(",")]:
        lres = prune_layers_model(model, n, img_size=hw, check=False)
        for gp in (None, a.global_percent):
            m = lres.compact
            if gp is not None:
                m = prune_model(m, PruneOptions(strategy="slim", global_percent=gp, img_size=hw),
                                check=False).compact
            rows.append((n, gp, depth(m), count_params(m), model_flops(m, hw)))
            models.append(m)
    times = latencies_ms(models, hw, a.runs)
    print("| shortcuts removed | channels (slim, --global-percent) | conv layers | params | "
          "FLOPs (G) | latency ms, median (min) |")
    print("|---|---|---|---|---|---|")
    for (n, gp, dep, par, fl), t in zip(rows, times):
        print(f"| {n} | {gp if gp is not None else '-'} | {dep} | {par:,} "
              f"({100 * par / base['params']:.0f}%) | {fl / 1e9:.1f} "
              f"({100 * fl / base['flops']:.0f}%) | {statistics.median(t):.0f} ({min(t):.0f}) |")
    small = build_model(a.cfg).eval()
    small.load_state_dict(model.state_dict())
    v = prune_layers_model(small, 12, img_size=(64, 64)).report["verification"]
    print(f"\nVerification of --shortcuts 12 at 64x64: max |d| compact vs folded "
          f"{v['max_abs_vs_folded']:.2g}, vs unfolded masked (border gap) "
          f"{v['max_abs_vs_masked_unfolded']:.2g}, outputs up to {v['max_abs_output']:.2g}.")


if __name__ == "__main__":
    main()
