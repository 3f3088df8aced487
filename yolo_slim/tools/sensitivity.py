r"""Sensitivity analysis: prune one unit at a time, measure the metric drop, then choose per-unit
ratios for a FLOPs or latency target under a maximum drop and write them for `prune_channels.py`.

  python -m yolo_slim.tools.sensitivity --cfg c.cfg --weights w.weights --data d.data \
      --ratios 0.1 0.3 0.5 0.7 --target-flops 0.5 --max-drop 0.02 --output-dir runs/sens
  python prune_channels.py --cfg c.cfg --weights w.weights --layer-ratios runs/sens/ratios.json ...

A *unit* is what can only be cut together (masks.MaskSolver.units: a shortcut group, else one
conv). For every unit and ratio r, the unit alone loses the fraction r of its lowest-scored
channels (by --importance), the compact model is evaluated (mAP@0.5 on the first --eval-images
validation images) and the drop from the unpruned model is recorded: sensitivity.csv/.md/.png.

With one target — --target-flops F, --target-latency MS or --target-speedup X (the latency the
table of python -m yolo_slim.tools.latency predicts, as prune_channels.py's targets; --latency-table,
else measured once and cached) — per-unit ratios are chosen greedily under --max-drop
(tools/ratio_choice.py). ratios.json holds the chosen per-conv ratios, what they reach (FLOPs
fraction; predicted ms and the target in ms) and the options that reproduce the same masks
(strategy, importance, --layer-keep, --round-to).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main
from yolo_slim.analysis.graph import STRATEGIES, build_graph
from yolo_slim.analysis.importance import IMPORTANCE, node_scores
from yolo_slim.nn.model import Darknet, check_img_size
from yolo_slim.prune.compact import compact_model
from yolo_slim.prune.fold import channel_cuts
from yolo_slim.prune.verify import apply_cut
from yolo_slim.prune.cli import MaskOptions, TargetOptions
from yolo_slim.prune.masks import MaskSolver
from yolo_slim.tools.ratio_choice import choose_ratios, layer_ratio_map, target_cost, unit_keep


@dataclass
class SensitivityOptions(TargetOptions, MaskOptions):
    """The mask options and targets of prune_channels.py (the same flags, checks and help), and
    the analysis' own. A latency target's table: --latency-table, else measured once, cached."""
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7], metadata={
        "min": 0, "max": 1, "help": "the cuts each unit is measured at"})
    max_drop: float = field(default=0.02, metadata={"min": 0, "help": "largest mAP@0.5 drop per unit"})
    img_size: int | None = field(default=None, metadata={"type": int, "min": 1})
    eval_images: int = field(default=100, metadata={"min": 0, "help": "0 = all"})
    batch_size: int = field(default=8, metadata={"min": 1})


def pruned_copy(model: Darknet, g, keep: np.ndarray) -> Darknet:
    """The compact model of a channel mask, cut as every pruning run cuts (prune/verify.py)."""
    return apply_cut(model, channel_cuts(g, keep), lambda f: compact_model(f, g, keep))[1]


def measure(model: Darknet, solver: MaskSolver, ratios: Sequence[float],
            metric: Callable[[Darknet], float], log=print) -> dict[str, Any]:
    """Per unit and ratio: FLOPs fraction, metric and drop (unit pruned alone)."""
    base = float(metric(model))
    units = solver.units()
    rows = []
    for k, u in enumerate(units):
        for r in ratios:
            keep = solver.ratio_keep({u[0]: r})
            n = sum(len(solver.g.conv_nodes[i]) for i in u)
            kept = sum(int(keep[solver.g.conv_nodes[i]].sum()) for i in u)
            val = base if keep.all() else float(metric(pruned_copy(model, solver.g, keep)))
            rows.append({"unit": k, "layers": u, "ratio": r, "channels": n, "kept": kept,
                         "flops": solver.flops(keep) / solver.flops_full,
                         "metric": val, "drop": base - val})
            log(f"unit {k} layers {u}: cut {r:.2f} -> keep {kept}/{n}, metric {val:.4f} "
                f"(drop {base - val:+.4f})")
    return {"base": base, "units": units, "ratios": list(ratios), "rows": rows}


def table_text(table: dict[str, Any], choice: dict[str, Any] | None = None) -> tuple[str, str]:
    """(CSV, markdown): one CSV row per unit and ratio; markdown = drop per unit x ratio, and
    with `choice` (ratios.json) the chosen cells and what they reach."""
    chosen = choice["unit_ratios"] if choice else None
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["unit", "layers", "channels", "ratio", "kept", "flops_fraction", "map50", "drop"])
    for r in table["rows"]:
        w.writerow([r["unit"], " ".join(map(str, r["layers"])), r["channels"], r["ratio"],
                    r["kept"], f"{r['flops']:.4f}", f"{r['metric']:.4f}", f"{r['drop']:.4f}"])
    ratios = table["ratios"]
    md = [f"baseline mAP@0.5 {table['base']:.4f}; cells: drop when the unit alone is cut by the "
          "ratio" + (f"; **bold** = chosen\n\n{target_text(choice)}" if choice else ""), "",
          "| unit | layers | ch | " + " | ".join(f"{r:g}" for r in ratios) + " |",
          "|---|---|---|" + "---|" * len(ratios)]
    for k, u in enumerate(table["units"]):
        cells = []
        for r in ratios:
            row = next(x for x in table["rows"] if x["unit"] == k and x["ratio"] == r)
            s = f"{row['drop']:+.3f}"
            cells.append(f"**{s}**" if chosen and chosen[k] == r else s)
        ch = next(x["channels"] for x in table["rows"] if x["unit"] == k)
        md.append(f"| {k} | {','.join(map(str, u))} | {ch} | " + " | ".join(cells) + " |")
    return buf.getvalue(), "\n".join(md) + "\n"


def plot_heatmap(table: dict[str, Any], path: str, max_drop: float,
                 chosen: list[float] | None = None) -> None:
    """Rows = units, columns = ratios, colour green (no drop) -> red (>= 2x max-drop)."""
    import cv2
    from yolo_slim.core.draw import canvas, put_text, save_png
    units, ratios = table["units"], table["ratios"]
    cw, chh, left, top = 70, 20, 170, 40
    img = canvas(top + chh * len(units) + 30, left + cw * len(ratios) + 20)
    scale = max(2 * max_drop, 1e-6)
    for c, r in enumerate(ratios):
        put_text(img, f"cut {r:g}", (left + c * cw + 8, top - 8))
    for k, u in enumerate(units):
        y = top + k * chh
        label = ",".join(map(str, u))
        put_text(img, f"{k}: {label[:22]}", (4, y + 14), 0.35)
        for c, r in enumerate(ratios):
            row = next(x for x in table["rows"] if x["unit"] == k and x["ratio"] == r)
            t = min(max(row["drop"] / scale, 0.0), 1.0)
            color = (60, int(200 * (1 - t)) + 30, int(220 * t) + 30)
            x = left + c * cw
            cv2.rectangle(img, (x, y), (x + cw - 2, y + chh - 2), color, -1)
            if chosen and chosen[k] == r:
                cv2.rectangle(img, (x, y), (x + cw - 2, y + chh - 2), (0, 0, 0), 2)
            put_text(img, f"{row['drop']:+.3f}", (x + 6, y + 14), 0.35)
    put_text(img, f"mAP@0.5 drop per unit cut alone (base {table['base']:.3f}; red >= {scale:.3g})",
          (4, 14), 0.4)
    save_png(img, path)


def map50_metric(data: str, img_size: int, eval_images: int, batch_size: int) -> Callable:
    """mAP@0.5 on the first `eval_images` validation images (loaded once, kept in memory)."""
    from yolo_slim.eval.evaluate import evaluate, validation_loader
    loader, dc = validation_loader(data, img_size, batch_size, eval_images)
    batches = list(loader)
    return lambda m: float(evaluate(m, batches, progress=False, nc=dc.classes)["map50"])


def target_text(chosen: dict[str, Any]) -> str:
    """One line: what the chosen ratios reach, against the target."""
    text = f"chosen ratios reach {chosen['flops_fraction']:.4f} of the FLOPs"
    if "predicted_ms" in chosen:
        text += (f", {chosen['predicted_ms']:.4g} ms predicted on the latency table (target "
                 f"{chosen['target_latency_ms']:.4g} ms; unpruned {chosen['predicted_before_ms']:.4g} ms)")
    return text


def run(cfg: str | None, weights: str, data: str, out_dir: str, opts: SensitivityOptions,
        log=print, metric: Callable[[Darknet], float] | None = None) -> dict[str, Any]:
    """The analysis (see module docstring); `metric` replaces mAP@0.5 on --data (tests)."""
    from yolo_slim.darknet.cfg import net_size
    from yolo_slim.nn.weights import load_model
    if opts.strategy not in STRATEGIES or opts.importance not in IMPORTANCE:
        raise YoloSlimError(f"--strategy {opts.strategy} / --importance {opts.importance} unknown")
    if not opts.ratios or any(not 0 < r <= 1 for r in opts.ratios):
        raise YoloSlimError(f"--ratios must be in (0, 1], got {opts.ratios}")
    model = load_model(cfg, weights).eval()
    hw = check_img_size(model.module_defs, (opts.img_size,) * 2) if opts.img_size else \
        net_size(model.module_defs)
    g = build_graph(model.module_defs)
    scores = node_scores(model, g, opts.importance, data, hw, opts.rank_batches, opts.batch_size)
    solver = MaskSolver(g, scores, opts.strategy, opts.layer_keep, opts.round_to, hw)
    cost, target = target_cost(solver, opts, cfg or weights, log)  # before the long part: errors early
    metric = metric or map50_metric(data, hw[1], opts.eval_images, opts.batch_size)
    os.makedirs(out_dir, exist_ok=True)
    table = measure(model, solver, sorted(opts.ratios), metric, log)
    result: dict[str, Any] = {"options": asdict(opts), "img_size": list(hw), **table}
    chosen, err = None, None
    if cost is not None:
        result["target"] = target
        try:
            chosen, reached = choose_ratios(solver, table, cost, opts.max_drop)
        except YoloSlimError as e:
            err = e  # the table is still worth writing
        else:
            keep = unit_keep(solver, table["units"], chosen)
            ratios = {"layers": layer_ratio_map(table["units"], chosen),
                      "flops_fraction": solver.flops(keep) / solver.flops_full, **target,
                      **({"predicted_ms": reached} if "latency_table" in target else {}),
                      "max_drop": opts.max_drop,
                      "strategy": opts.strategy, "importance": opts.importance,
                      "layer_keep": opts.layer_keep, "round_to": opts.round_to,
                      "img_size": list(hw), "unit_ratios": chosen}
            atomic_write_bytes(os.path.join(out_dir, "ratios.json"),
                               json.dumps(ratios, indent=1).encode())
            result["chosen"] = ratios
    csv_text, md = table_text(table, result.get("chosen"))
    atomic_write_bytes(os.path.join(out_dir, "sensitivity.csv"), csv_text.encode())
    atomic_write_bytes(os.path.join(out_dir, "sensitivity.md"), md.encode())
    atomic_write_bytes(os.path.join(out_dir, "sensitivity.json"), json.dumps(result, indent=1).encode())
    plot_heatmap(table, os.path.join(out_dir, "sensitivity.png"), opts.max_drop, chosen)
    if err is not None:
        raise err
    return result


OUTPUT_FILES = ("sensitivity.csv", "sensitivity.md", "sensitivity.png", "sensitivity.json",
                "ratios.json", "args.json")


def parser() -> argparse.ArgumentParser:
    from yolo_slim.core.cli import add_dataclass_args, module_parser
    p = module_parser("python -m yolo_slim.tools.sensitivity", __doc__)
    add_dataclass_args(p, SensitivityOptions)
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    from yolo_slim.core.cli import from_args, parse, write_resolved
    from yolo_slim.core.paths import guard_outputs
    from yolo_slim.data.inputs import data_inputs
    a = parse(parser(), argv)
    if a is None:
        return 0
    opts = from_args(SensitivityOptions, a)
    guard_outputs({"--cfg": a.cfg, "--weights": a.weights, "--latency-table": a.latency_table,
                   **data_inputs(a.data)},
                  {"--output-dir": [os.path.join(a.output_dir, f) for f in OUTPUT_FILES]})
    res = run(a.cfg, a.weights, a.data, a.output_dir, opts)
    write_resolved(os.path.join(a.output_dir, "args.json"), a)
    print(table_text(res, res.get("chosen"))[1])
    if "chosen" in res:
        c = res["chosen"]
        print(f"{target_text(c)}; next:\n"
              "  python prune_channels.py" + (f" --cfg {a.cfg}" if a.cfg else "")
              + f" --weights {a.weights} --output-dir OUT "
              f"--layer-ratios {os.path.join(a.output_dir, 'ratios.json')} --strategy {a.strategy} "
              f"--importance {a.importance} --layer-keep {a.layer_keep} --round-to {a.round_to}"
              + (f" --img-size {a.img_size}" if a.img_size else "")
              + (f" --data {a.data} --rank-batches {a.rank_batches} --batch-size {a.batch_size}"
                 if a.importance == "rank" else "")
              + (f" --latency-table {c['latency_table']} --latency-report" if "latency_table" in c else ""))
    print("wrote", ", ".join(os.path.join(a.output_dir, f) for f in
                             ("sensitivity.csv", "sensitivity.md", "sensitivity.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
