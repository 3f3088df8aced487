#!/usr/bin/env python3
"""The table of bench/trees_bench.sh: every stage's model of every run in ROOT scored on the
held-out tree photos (the .data file's valid split), read from the model files themselves.

  .venv/bin/python bench/trees_table.py --root runs/trees --data ~/.cache/yolo-slim/trees/d416/trees.data \
      [--img-size 416] [--out bench/results/trees.md]

Runs are ROOT/new-<T>-s<seed> (scripts/slim.sh) and ROOT/old-<T>-s<seed> (subgradient, percent
cut, fine-tuning), each with sparse/ pruned/ finetune/; ROOT/baseline/best.pt is the baseline of
them all. One table per FLOPs target: per seed and recipe, mAP@0.5 / mAP@0.5:0.95 after each
stage, the final model's FLOPs and params as shares of the baseline's, then the mean over seeds.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import re
from collections import defaultdict

import numpy as np

from yolo_slim.analysis.cost import count_params, model_flops
from yolo_slim.core.errors import atomic_write_bytes
from yolo_slim.deploy.ort_bench import cpu_isa
from yolo_slim.eval.evaluate import evaluate_on_data
from yolo_slim.nn.weights import load_model
from yolo_slim.report.pipeline_report import STAGES, find_stage_model

RECIPES = {"new": "new (`make slim`: prox to the target with KD, free cut, KD fine-tuning)",
           "old": "old (subgradient s·sign(γ), smallest-\\|γ\\| cut to the target, KD fine-tuning)"}
STAGE_NAMES = [name for name, _, _ in STAGES[1:]]  # sparse, pruned, fine-tuned


def find_runs(root: str) -> dict[str, list[tuple[str, int, str]]]:
    """{target: [(recipe, seed, run dir)]} of the run folders under root."""
    out = defaultdict(list)
    for d in sorted(glob.glob(os.path.join(root, "*-*-s*"))):
        m = re.fullmatch(r"(new|old)-([0-9.]+)-s(\d+)", os.path.basename(d))
        if m:
            out[m.group(2)].append((m.group(1), int(m.group(3)), d))
    return {t: sorted(runs, key=lambda r: (r[1], r[0])) for t, runs in sorted(out.items(), reverse=True)}


def score_runs(root: str, data: str, img_size: int) -> tuple[dict, dict]:
    """(baseline's row, {run dir: {stage: row}}): map50, map, flops, params of every model."""
    files = {("", "baseline"): (None, os.path.join(root, "baseline", "best.pt"))}
    for runs in find_runs(root).values():
        for _, _, d in runs:
            for name, folder, kind in STAGES[1:]:
                found = find_stage_model(d, folder, kind)
                if found:
                    files[(d, name)] = found
    models = {k: load_model(*v) for k, v in files.items()}
    print(f"evaluating {len(models)} models on {data}", flush=True)
    scores = evaluate_on_data(list(models.values()), data, img_size)
    rows: dict = defaultdict(dict)
    for (d, name), m, s in zip(models, models.values(), scores):
        rows[d][name] = dict(s, flops=model_flops(m, (img_size, img_size)), params=count_params(m))
    return rows.pop("")["baseline"], rows


def pair(r: dict | None) -> str:
    return f"{r['map50']:.3f} / {r['map']:.3f}" if r else "—"


def table(target: str, runs: list, base: dict, rows: dict) -> list[str]:
    head = ["| seed | recipe | " + " | ".join(STAGE_NAMES) + " | FLOPs | params |",
            "| --- | --- | " + " | ".join("---" for _ in STAGE_NAMES) + " | --- | --- |"]
    out, by_recipe = [f"### Target: {float(target):.0%} of the baseline's FLOPs", ""] + head, defaultdict(list)
    for recipe, seed, d in runs:
        r = rows.get(d, {})
        final = r.get("fine-tuned") or r.get("pruned")
        share = lambda k: f"{final[k] / base[k]:.1%}" if final else "—"  # noqa: E731
        out.append(f"| {seed} | {recipe} | " + " | ".join(pair(r.get(s)) for s in STAGE_NAMES)
                   + f" | {share('flops')} | {share('params')} |")
        by_recipe[recipe].append(r)
    for recipe, rs in by_recipe.items():
        means = []
        for s in STAGE_NAMES:
            got = [r[s] for r in rs if s in r]
            means.append(pair({k: np.mean([g[k] for g in got]) for k in ("map50", "map")} if got else None)
                         + (f" (n={len(got)})" if got and len(got) != len(rs) else ""))
        out.append(f"| mean of {len(rs)} | **{recipe}** | " + " | ".join(means) + " | | |")
    return out + [""]


def build(root: str, data: str, img_size: int) -> str:
    base, rows = score_runs(root, data, img_size)
    cpu = cpu_isa()
    parts = ["# Tree crowns: the new recipe vs the older tools (issue 26)", "",
             f"`bench/trees_bench.sh` (collected by `bench/trees_table.py`), {datetime.date.today()}, "
             f"{cpu['cpu']}, {cpu['cores']} cores. Data: `{data}` — the COCO yolov3-tiny "
             "transferred to one class (`tree`), trained on 65 tiles of 2 photos, scored on the "
             f"13 tiles of the 2 held-out photos (the valid split), {img_size} px, letterboxed.", "",
             f"**Baseline** (`{root}/baseline/best.pt`, the teacher of every run): mAP@0.5 / "
             f"mAP@0.5:0.95 **{pair(base)}**, {base['params'] / 1e6:.3f} M params, "
             f"{base['flops'] / 1e9:.3f} GFLOPs.", "",
             "Cells are mAP@0.5 / mAP@0.5:0.95 of each stage's model file (`evaluate_on_data`, "
             "conf 0.001, NMS IoU 0.6); FLOPs and params are the final model's, as shares of the "
             "baseline's. Recipes: " + "; ".join(RECIPES.values()) + ". Each training stage keeps "
             "its best.pt, chosen on the same valid split, as `make slim` does.", ""]
    for target, runs in find_runs(root).items():
        parts += table(target, runs, base, rows)
    cmds = os.path.join(root, "commands.txt")
    if os.path.isfile(cmds):
        with open(cmds) as f:
            parts += ["## Commands", "", "`make slim`'s own commands are in each "
                      "`new-*/commands.txt` and `new-*/REPORT.md`.", "", "```bash", f.read().strip(), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/trees")
    p.add_argument("--data", required=True)
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--out", default="bench/results/trees.md")
    a = p.parse_args(argv)
    text = build(a.root, a.data, a.img_size)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    atomic_write_bytes(a.out, text.encode())
    print(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
