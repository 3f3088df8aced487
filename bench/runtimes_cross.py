"""A cut for runtime A, timed on A and on B (issue 29's cross-table).

For each runtime R, `prune_channels.py --target-speedup X --runtime R` cuts the model by R's
latency table and its closed loop (measured on R); then the uncut model and every cut are
exported to each runtime's format and timed there interleaved (deploy/ort_latency.models_latency):
speed-up = median over rounds of uncut / cut in the same round.

  python bench/runtimes_cross.py --cfg C --weights W --img-size 416 --target-speedup 2 \
      [--runtimes onnxruntime openvino ncnn] [--threads 2] [--rounds 30] [--work runs/cross] --out R.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yolo_slim.analysis.cost import model_flops  # noqa: E402
from yolo_slim.deploy.ort_bench import cpu_isa  # noqa: E402
from yolo_slim.deploy.ort_latency import models_latency  # noqa: E402
from yolo_slim.nn.weights import load_model  # noqa: E402


def cut_for(rt: str, a: argparse.Namespace) -> str:
    """Output folder of the cut targeted at runtime `rt` (made unless there)."""
    out = os.path.join(a.work, f"cut-{rt}")
    if not os.path.exists(os.path.join(out, "prune_report.json")) or a.refresh:
        cmd = [sys.executable, "prune_channels.py", "--cfg", a.cfg, "--weights", a.weights,
               "--target-speedup", str(a.target_speedup), "--runtime", rt, "--img-size", str(a.img_size),
               "--latency-threads", str(a.threads), "--output-dir", out]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cfg", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--target-speedup", type=float, default=2.0)
    p.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino", "ncnn"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--work", default="runs/cross")
    p.add_argument("--refresh", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    hw = (a.img_size, a.img_size)
    models = {"uncut": load_model(a.cfg, a.weights).eval()}
    for rt in a.runtimes:
        d = cut_for(rt, a)
        stem = os.path.splitext(os.path.basename(a.cfg))[0]
        models[f"cut for {rt}"] = load_model(os.path.join(d, stem + ".cfg"),
                                             os.path.join(d, stem + ".weights")).eval()
    flops = {k: model_flops(m, hw) for k, m in models.items()}
    timed = {rt: models_latency(models, hw, 1, a.threads, a.rounds, ref="uncut", runtime=rt)
             for rt in a.runtimes}
    rows = [f"Target {a.target_speedup}x, {a.img_size}x{a.img_size}, batch 1, {a.threads} threads; each "
            f"column one runtime, its models timed interleaved ({a.rounds} rounds); speed-up = median "
            f"per-round uncut/cut; ratio = speed-up / FLOPs reduction. CPU: {cpu_isa()['text']}.", "",
            "| cut | FLOPs reduction | " + " | ".join(f"on {rt}: speed-up (ratio)" for rt in a.runtimes) + " |",
            "| --- | --- | " + " | ".join("---" for _ in a.runtimes) + " |"]
    for k in models:
        red = flops["uncut"] / flops[k]
        cells = []
        for rt in a.runtimes:
            s = 1 / timed[rt][k]["ratio_median"]
            mark = "**" if k == f"cut for {rt}" else ""
            cells.append(f"{mark}{s:.2f}x ({s / red:.2f}){mark}")
        rows.append(f"| {k} | {red:.2f}x | " + " | ".join(cells) + " |")
    rows += ["", "uncut median ms: " + ", ".join(f"{rt} {timed[rt]['uncut']['median_ms']:.1f}"
                                                for rt in a.runtimes)]
    text = "\n".join(rows) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    with open(os.path.join(a.work, "cross.json"), "w") as f:
        json.dump({"flops": flops, "latency": timed}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
