#!/usr/bin/env python3
"""The table of bench/prox_bench.sh: per variant (and seed), mAP of the sparse model, of the cut
before any fine-tuning, and after fine-tuning, with the FLOPs and params the cut kept.

  python bench/prox_table.py --out runs/prox [--demo runs/demo [--demo-variant uniform]]

--demo takes a `make demo` run folder as the seed-0 row of its variant (the demo's recipe).
With several seeds a second table gives each variant's fine-tuned mean and range over the seeds
and its gap to the dense control of the same seed (paired: same data order and augmentation).

mAP values are the last evaluated epoch of each run's results.csv (the model the next stage
starts from / the final model), the pruned ones from prune_report.json (before fine-tuning).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os

NAMES = {"flops": "prox, FLOPs weights, target 0.25, --dead",
         "uniform": "prox, uniform weights, target 0.25, --dead",
         "latency": "prox, latency weights (ORT CPU table), target 0.25, --dead",
         "uniform-kd": "prox, uniform weights, target 0.25, KD (chen) in the sparse phase too, --dead",
         "subgrad": "subgradient s=0.01, smallest \\|γ\\| cut to 0.25 FLOPs",
         "control": "dense control (no sparsity, no cut)"}


def last_eval(path: str) -> dict[str, float] | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("map50")]
    return {"map50": float(rows[-1]["map50"]), "map": float(rows[-1]["map"])} if rows else None


def variant_row(d: str, name: str) -> dict | None:
    sparse = last_eval(os.path.join(d, "train" if name == "control" else "sparse", "results.csv"))
    ft = last_eval(os.path.join(d, "finetune", "results.csv"))
    rep_path = os.path.join(d, "pruned", "prune_report.json")
    rep = json.load(open(rep_path)) if os.path.isfile(rep_path) else None
    if sparse is None:
        return None
    row = {"sparse": sparse, "finetune": ft, "pruned": None, "flops": 1.0, "params": 1.0}
    if rep:
        row["pruned"] = rep.get("map", {}).get("after")
        if row["pruned"] is None and rep.get("dead") and \
                rep["verification"]["max_abs_vs_masked_unfolded"] < 1e-4:
            row["pruned"] = dict(sparse, exact=True)  # only dead channels cut: the sparse model's maps
        row["flops"] = rep["flops"]["after"] / rep["flops"]["before"]
        row["params"] = rep["params"]["after"] / rep["params"]["before"]
        if "verification" in rep:
            row["gap"] = rep["verification"]["max_abs_vs_masked_unfolded"]
    return row


def fmt(m: dict | None) -> str:
    if not m:
        return "—"
    return f"{m['map50']:.3f} / {m['map']:.3f}" + (" (= sparse: exact cut)" if m.get("exact") else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/prox")
    p.add_argument("--demo", help="a `make demo` run folder: its sparse/pruned/finetune as a seed-0 row")
    p.add_argument("--demo-variant", default="uniform", choices=list(NAMES),
                   help="the recipe the demo ran (scripts/common.sh SPARSE_WEIGHT)")
    a = p.parse_args()
    seeds = [(0, a.out)] + sorted((int(s.rsplit("seed", 1)[1]), s) for s in glob.glob(os.path.join(a.out, "seed*")))
    print("| variant | seed | sparse mAP@0.5 / @0.5:0.95 | pruned, before fine-tuning | max abs Δ of the cut "
          "(borders incl.) | FLOPs kept | params kept | fine-tuned |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    finals: dict[str, dict[int, dict]] = {}
    for name in NAMES:
        for seed, root in seeds:
            d = a.demo if (name == a.demo_variant and seed == 0 and a.demo) else os.path.join(root, name)
            r = variant_row(d, name)
            if r is None:
                continue
            if r["finetune"]:
                finals.setdefault(name, {})[seed] = r["finetune"]
            src = " (the demo run)" if d == a.demo else ""
            gap = f"{r['gap']:.2g}" if "gap" in r else "—"
            print(f"| {NAMES[name]}{src} | {seed} | {fmt(r['sparse'])} | {fmt(r['pruned'])} | {gap} | "
                  f"{r['flops']:.1%} | {r['params']:.1%} | {fmt(r['finetune'])} |")

    if any(len(v) > 1 for v in finals.values()):
        print_seed_summary(finals)


def print_seed_summary(finals: dict[str, dict[int, dict]]) -> None:
    """Mean (min-max) of the fine-tuned mAPs over seeds, and the paired gap to the control."""
    ctrl = finals.get("control", {})
    print("\n| variant | seeds | fine-tuned mAP@0.5 mean (min-max) | mAP@0.5:0.95 mean (min-max) | "
          "minus the control of the same seed, mean (min-max), @0.5 / @0.5:0.95 |")
    print("| --- | --- | --- | --- | --- |")
    for name, by_seed in finals.items():
        cells = []
        for k in ("map50", "map"):
            v = [m[k] for m in by_seed.values()]
            cells.append(f"{sum(v) / len(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        gaps = []
        for k in ("map50", "map"):
            d = [m[k] - ctrl[s][k] for s, m in by_seed.items() if s in ctrl]
            gaps.append(f"{sum(d) / len(d):+.3f} ({min(d):+.3f} to {max(d):+.3f})" if d and name != "control"
                        else "—")
        print(f"| {NAMES[name]} | {', '.join(map(str, sorted(by_seed)))} | {cells[0]} | {cells[1]} | "
              f"{gaps[0]} / {gaps[1]} |")


if __name__ == "__main__":
    main()
