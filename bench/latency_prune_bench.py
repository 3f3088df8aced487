#!/usr/bin/env python3
"""Latency-aware pruning vs the |γ| FLOPs cut, on the deployment runtime (onnxruntime CPU).

For one model: the latency table (cached, tools/latency.py); cut A = --target-flops F by |γ|;
cut B = --target-speedup at A's *measured* speed-up (same budget, widths chosen by the table and
corrected by measurement);
cut C = --target-latency T for an explicit T (is the measured latency within 10% of T?).
All models (baseline, A, B, C) are then timed interleaved in one run: medians with p25-p75, the
speed-up, the FLOPs reduction and speed-up ÷ FLOPs reduction; mAP@0.5 before fine-tuning when
--data is given. Without --weights the model has random weights and random BN γ ("random γ").

  python bench/latency_prune_bench.py --cfg cfg/yolov3-tiny.cfg --img-size 416 --target-flops 0.3 \
      --target-ms 20 --out bench/results/latency_prune.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import prune_channels  # noqa: E402
from yolo_slim.analysis.cost import model_flops  # noqa: E402
from yolo_slim.deploy.ort_bench import cpu_isa, load_average  # noqa: E402
from yolo_slim.deploy.ort_latency import models_latency  # noqa: E402
from yolo_slim.nn.weights import load_model, save_darknet_weights  # noqa: E402
from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402


def random_weights(cfg: str, path: str) -> None:
    torch.manual_seed(0)
    m = Darknet(parse_cfg(cfg)).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.05, 1.0)  # random γ: |γ| ranks channels at random
    save_darknet_weights(m, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cfg", required=True)
    p.add_argument("--weights")
    p.add_argument("--img-size", type=int, required=True)
    p.add_argument("--target-flops", type=float, required=True)
    p.add_argument("--target-ms", type=float, nargs="*", default=[])
    p.add_argument("--data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--work", default=None)
    p.add_argument("--out")
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="latbench_")
    os.makedirs(work, exist_ok=True)
    w = a.weights
    if not w:
        w = os.path.join(work, "random.weights")
        random_weights(a.cfg, w)
    common = ["--cfg", a.cfg, "--weights", w, "--img-size", str(a.img_size), "--latency-report",
              "--latency-threads", str(a.threads)] + (["--data", a.data] if a.data else [])
    reps = {}

    def cut(name: str, *flags: str) -> None:
        out = os.path.join(work, name)
        assert prune_channels.main(common + ["--output-dir", out, *flags]) == 0
        with open(os.path.join(out, "prune_report.json")) as f:
            reps[name] = json.load(f)
    cut("flops", "--target-flops", str(a.target_flops))
    # the same measured speed-up as the FLOPs cut (a ratio of interleaved runs: what another
    # process's load moves least); the closed loop measures until it is met within 5%
    cut("latency", "--target-speedup", f"{reps['flops']['latency']['speedup']:.4f}")
    for t in a.target_ms:
        cut(f"T{t:g}", "--target-latency", str(t))
    hw = (a.img_size, a.img_size)
    models = {"baseline": load_model(a.cfg, w)}
    stem = os.path.splitext(os.path.basename(a.cfg))[0]
    for k in reps:
        models[k] = load_model(os.path.join(work, k, f"{stem}.cfg"), os.path.join(work, k, f"{stem}.weights"))
    load0 = load_average()
    lat = models_latency(models, hw, 1, a.threads, a.rounds, ref="baseline")
    f0 = model_flops(models["baseline"], hw)
    rows = ["| model | FLOPs | predicted ms | measured median ms (p25–p75) | min ms | speed-up | "
            "FLOPs reduction | speed-up ÷ FLOPs red. | mAP@0.5 before FT |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, m in models.items():
        L = lat[k]
        f = model_flops(m, hw)
        r = reps.get(k, {})
        pred = r.get("latency", {}).get("predicted_ms", reps["flops"]["latency"]["predicted_before_ms"])
        mp = r.get("map", {}).get("after", {}).get("map50") if r else \
            reps["flops"].get("map", {}).get("before", {}).get("map50")
        sp = 1 / L["ratio_median"]
        rows.append(f"| {k} | {f / 1e9:.3f} G | {pred:.2f} | {L['median_ms']:.2f} ({L['p25_ms']:.2f}–"
                    f"{L['p75_ms']:.2f}) | {L['min_ms']:.2f} | {sp:.2f}x | {f0 / f:.2f}x | "
                    f"{sp / (f0 / f):.2f} | {'' if mp is None else f'{mp:.3f}'} |")
    head = (f"`{' '.join(sys.argv)}` — {datetime.date.today()}, {cpu_isa()['text']}, onnxruntime "
            f"{a.threads} threads, batch 1, {a.rounds} interleaved rounds; load average {load0} "
            f"before timing, {load_average()} after")
    text = head + "\n\n" + "\n".join(rows) + "\n"
    for k, r in reps.items():
        text += f"\n- {k}: channels after {json.dumps(r['channels']['after'])}"
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
