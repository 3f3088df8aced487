"""The one pruning pipeline: load -> decide (blocks and/or channels) -> propagate constants ->
compact -> verify -> write. prune_channels.py, prune_layers.py, iterate and sensitivity use it.

A plan removes `shortcuts` residual blocks (layers.py decides which) and/or cuts channels
(`channels`: masks.py decides which). Each cut goes through the same steps (prune/verify.py:
`apply_cut` = fold.propagate + a compaction, then `verify`); blocks go first, channels are then
decided on the compact model exactly as prune_channels.py would decide them on the written files.
`run` writes `<stem>.cfg`, `<stem>.weights`, `<stem>.pt`, `prune_report.json` and the pictures,
reading the written cfg + weights back to check they reproduce the final model bit for bit.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from yolo_slim.analysis.cost import count_params, model_flops, plot_channels, plot_gamma_hist
from yolo_slim.core.errors import TargetUnreachable
from yolo_slim.nn.model import Darknet, check_img_size
from yolo_slim.prune.channels import (PruneOptions, PruneResult, cut_rule, evaluate_maps, prune_model,
                                      score_name)
from yolo_slim.prune.layer_run import (LayerPruneResult, plot_blocks, prune_layers_model,
                                       ratios_after_removal)
from yolo_slim.prune.layers import depth
from yolo_slim.core.paths import sha256_file
from yolo_slim.prune.outputs import check_output_dir, write_model_files, write_report


@dataclass
class PrunePlan:
    shortcuts: int | None = None           # residual blocks to remove (None: no layer pruning)
    rank: str = "mean"                     # block score: mean or max |γ| of its last conv
    channels: PruneOptions | None = None   # channel pruning (None: none)
    img_size: tuple[int, int] | None = None  # FLOPs size (the cfg's if None)
    seed: int = 0                          # seed of the verification inputs
    latency_table: str | None = None       # analysis/latency.py table: predicted latency in the report


@dataclass
class Pruned:
    final: Darknet
    layers: LayerPruneResult | None
    channels: PruneResult | None


def prune(model: Darknet, plan: PrunePlan, log: Callable[[str], None] = print) -> Pruned:
    """Apply the plan to `model` (unchanged); every cut is folded, compacted and verified."""
    lres = None
    opts = plan.channels
    if plan.shortcuts is not None:
        lres = prune_layers_model(model, plan.shortcuts, plan.rank, plan.img_size, plan.seed)
        if opts is not None and opts.layer_ratios is not None:
            ratios, dropped = ratios_after_removal(opts.layer_ratios, lres.index, lres.removed)
            if dropped:
                log(f"--layer-ratios: layers {dropped} were in removed blocks; their ratios are unused")
            opts = replace(opts, layer_ratios=ratios)
    start = lres.compact if lres else model
    cres = prune_model(start, opts, log=log) if opts is not None else None
    return Pruned(cres.compact if cres else start, lres, cres)


def _report(model: Darknet, p: Pruned, plan: PrunePlan) -> dict[str, Any]:
    """prune_report.json: the channel report alone, or the layer report with the channel
    report of the combined run under "channel_pruning"."""
    if p.layers is None:
        rep = p.channels.report
        rep["manifest_extra"] = {"strategy": plan.channels.strategy, "threshold": p.channels.threshold,
                                 "kept_channels": rep.pop("kept_channels"),
                                 "kept_channels_note": "conv layers not listed keep all their channels"}
        return rep
    rep = p.layers.report
    if p.channels is not None:
        c = p.channels.report
        rep["channel_pruning"] = {k: c[k] for k in (
            "strategy", "threshold", "options", "img_size", "params", "flops", "channels",
            "raised_by_floor_or_rounding", "verification", "kept_channels", "latency") if k in c}
    hw = tuple(rep["img_size"])
    rep["final"] = {"depth": depth(p.final), "params": count_params(p.final),
                    "flops": model_flops(p.final, hw)}
    rep["manifest_extra"] = {"rank": plan.rank, "removed_shortcuts": [b.shortcut for b in p.layers.removed],
                             "channel_options": asdict(plan.channels) if plan.channels else None}
    return rep


def _pictures(p: Pruned, plan: PrunePlan, out_dir: str, stem: str) -> None:
    if p.layers is not None:
        plot_blocks(p.layers.scores, p.layers.removed, os.path.join(out_dir, "layers.png"),
                    f"{stem}: {plan.rank} |gamma| of conv before each shortcut")
    if p.channels is None:
        return
    c, opts = p.channels, plan.channels
    ch = c.report["channels"]
    title = (f"{stem} after layer pruning: {opts.strategy}" if p.layers is not None
             else f"{stem}: {opts.strategy}, {cut_rule(c.threshold, 4)}")
    plot_channels(ch["before"], ch["after"], os.path.join(out_dir, "channels.png"), title)
    if p.layers is None:
        prunable = [c.graph.conv_nodes[i] for i in c.report["prunable_convs"]]
        gam = c.scores[np.concatenate(prunable)] if prunable else np.zeros(0)
        plot_gamma_hist(gam, os.path.join(out_dir, "gamma_hist.png"),
                        c.threshold if math.isfinite(c.threshold) else None,
                        title=f"{stem} {score_name(opts.importance)}")


def wants_closed_loop(plan: PrunePlan, measure) -> bool:
    c = plan.channels
    return measure is not None and c is not None and c.latency_table is not None and \
        (c.target_latency is not None or c.target_speedup is not None)


def closed_loop(model: Darknet, plan: PrunePlan, p: Pruned, measure, hw: tuple[int, int],
                log: Callable[[str], None], rounds: int = 3, tol: float = 0.05) -> tuple[Pruned, dict]:
    """A latency target met on the runtime, not only in the table. The table's widths are
    measured (before and after, interleaved); while the measured latency misses the target by
    more than `tol`, the table's target is scaled by target / measured and the widths are chosen
    again (at most `rounds` times; the closest model is kept). The table predicts well where it
    was measured, but a cut model's reorders, pools and caches are not the sum of its convs
    timed alone (yolov3-tiny at 416: a table-chosen cut predicted 13.7 ms and measured 18.8)."""
    from yolo_slim.analysis.latency import LatencyTable
    from yolo_slim.prune.latency_target import table_target
    c = plan.channels
    t_table = table_target(LatencyTable.load(c.latency_table), c.target_latency, c.target_speedup,
                           (p.layers.compact if p.layers else model).module_defs)
    history, best = [], None
    for k in range(rounds + 1):
        m = measure({"before": model, "after": p.final}, hw)
        b, a = m["models"]["before"], m["models"]["after"]
        # --target-latency: the measured ms; --target-speedup: the measured per-round ratio
        goal = c.target_latency if c.target_latency is not None else b["median_ms"] / c.target_speedup
        err = a["median_ms"] / goal - 1 if c.target_latency is not None else \
            a["ratio_median"] * c.target_speedup - 1
        history.append({"table_target_ms": t_table, "measured_ms": a["median_ms"],
                        "measured_before_ms": b["median_ms"], "goal_ms": goal, "error": err})
        log(f"latency round {k}: table target {t_table:.3g} ms -> measured {a['median_ms']:.3g} ms "
            f"(goal {goal:.3g} ms, {err:+.1%})")
        if best is None or abs(err) < abs(best[0]):
            best = (err, p, m)
        if abs(err) <= tol or k == rounds:
            break
        t_table *= 1 / (1 + err)
        try:
            p = prune(model, replace(plan, channels=replace(c, target_latency=t_table, target_speedup=None)), log)
        except TargetUnreachable as e:  # the table cannot go lower: keep the closest so far
            log(f"latency round {k + 1}: {e}; keeping the closest measured cut")
            break
    err, p, m = best
    return p, {"rounds": history, "goal_ms": history[-1]["goal_ms"], "measured_error": err,
               "measured": m}


def _latency(model: Darknet, p: Pruned, plan: PrunePlan, rep: dict[str, Any], measure, out_dir: str,
             stem: str, loop: dict | None = None) -> dict[str, Any]:
    """Predicted (the table) and measured (`measure`: the two models timed interleaved) latency
    of the model before and after, speed-up ÷ FLOPs reduction, and latency.png."""
    from yolo_slim.analysis.latency import LatencyTable, plot_latency_flops
    out = dict(rep.get("latency") or {})
    fred = rep["flops"]["before"] / max(1, rep["final"]["flops"] if "final" in rep else rep["flops"]["after"])
    out["flops_reduction"] = fred
    path = plan.latency_table or (plan.channels.latency_table if plan.channels else None)
    if path:
        table = LatencyTable.load(path)
        before, after = (table.predict(m.module_defs)["total_ms"] for m in (model, p.final))
        out.update(predicted_before_ms=before, predicted_ms=after, predicted_speedup=before / after,
                   table=path)
        if len(model.module_defs) == len(p.final.module_defs):  # per-layer picture: channel cuts only
            plot_latency_flops(model.module_defs, table, os.path.join(out_dir, "latency.png"),
                               p.final.module_defs, title=stem)
    if loop is not None:
        out["closed_loop"] = {k: v for k, v in loop.items() if k != "measured"}
    if measure is not None:
        m = loop["measured"] if loop else measure({"before": model, "after": p.final}, tuple(rep["img_size"]))
        b, a = m["models"]["before"], m["models"]["after"]
        out.update(measured=m, measured_before_ms=b["median_ms"], measured_ms=a["median_ms"],
                   speedup=1 / a["ratio_median"], speedup_per_flops_reduction=1 / a["ratio_median"] / fred)
        if "predicted_ms" in out:
            out["predicted_error"] = out["predicted_ms"] / a["median_ms"] - 1
    return out


def latency_text(rep: dict[str, Any]) -> str:
    L = rep.get("latency")
    if not L:
        return ""
    parts = []
    if "closed_loop" in L:
        cl = L["closed_loop"]
        parts.append(f"latency goal {cl['goal_ms']:.3g} ms measured, met within {cl['measured_error']:+.1%} "
                     f"after {len(cl['rounds'])} measurement(s)")
    elif "target_ms" in L:
        parts.append(f"latency target {L['target_ms']:.3g} ms")
    if "predicted_ms" in L:
        parts.append(f"predicted {L['predicted_before_ms']:.3g} -> {L['predicted_ms']:.3g} ms")
    if "measured_ms" in L:
        parts.append(f"measured {L['measured_before_ms']:.3g} -> {L['measured_ms']:.3g} ms (median, "
                     f"interleaved; speed-up {L['speedup']:.2f}x, FLOPs reduction "
                     f"{L['flops_reduction']:.2f}x, ratio {L['speedup_per_flops_reduction']:.2f})")
    return "; ".join(parts)


def run(cfg: str | None, weights: str, out_dir: str, plan: PrunePlan, data: str | None = None,
        batch_size: int = 8, log: Callable[[str], None] = print,
        measure: Callable[[dict[str, Darknet], tuple[int, int]], dict] | None = None) -> dict[str, Any]:
    """Load, prune by the plan, verify, write the output dir; returns the report. `measure`
    (tools/latency.py's measure_hook: prune/ sits below deploy/) times both models."""
    from yolo_slim.nn.weights import load_model
    model = load_model(cfg, weights)
    hw = plan.img_size or (plan.channels.img_size if plan.channels else None)
    if hw:  # FLOPs and verification at a size the cfg runs at
        check_img_size(model.module_defs, hw)
    stem = os.path.splitext(os.path.basename(cfg or weights))[0]
    check_output_dir(out_dir, stem, {"--cfg": cfg, "--weights": weights})
    p = prune(model, plan, log)
    loop = None
    if wants_closed_loop(plan, measure):
        p, loop = closed_loop(model, plan, p, measure, tuple(plan.img_size or p.channels.report["img_size"]),
                              log, rounds=plan.channels.latency_rounds)
    rep = _report(model, p, plan)
    rep["manifest"] = {"cfg": cfg, "cfg_sha256": sha256_file(cfg) if cfg else None,
                       "weights": weights, "weights_sha256": sha256_file(weights),
                       **rep.pop("manifest_extra")}
    hw = tuple(rep["img_size"])
    if data:
        before, after = evaluate_maps([model, p.final], data, hw[1], batch_size)
        rep["map"] = {"before": before, "after": after}
    rep["files"], rep["verification"]["max_abs_reloaded"] = write_model_files(  # bit-exact at any size
        p.final, out_dir, stem, rep["manifest"], tuple(rep["verification"]["img_size"]), plan.seed + 1)
    _pictures(p, plan, out_dir, stem)
    if measure is not None or plan.latency_table or (plan.channels and plan.channels.latency_table):
        rep["latency"] = _latency(model, p, plan, rep, measure, out_dir, stem, loop)
    write_report(rep, os.path.join(out_dir, "prune_report.json"))
    return rep


# the two scripts' entry points live here, above channels.py and layer_run.py whose pieces the
# pipeline composes (there they made each module import the pipeline that imports it)
def run_channels(cfg: str | None, weights: str, out_dir: str, opts: PruneOptions,
                 data: str | None = None, batch_size: int = 8, log: Callable[[str], None] = print,
                 measure=None, latency_table: str | None = None) -> dict[str, Any]:
    """Channel pruning (prune_channels.py): `run` with a channels-only plan; returns the report."""
    plan = PrunePlan(channels=opts, seed=opts.seed, latency_table=latency_table)
    return run(cfg, weights, out_dir, plan, data, batch_size, log, measure)


def run_layers(cfg: str | None, weights: str, out_dir: str, shortcuts: int, rank: str = "mean",
               channel_opts: PruneOptions | None = None, img_size: int | None = None, seed: int = 0,
               data: str | None = None, batch_size: int = 8, log: Callable[[str], None] = print,
               measure=None, latency_table: str | None = None) -> dict[str, Any]:
    """Layer (+ channel) pruning (prune_layers.py): `run` with a block plan; returns the report."""
    plan = PrunePlan(shortcuts, rank, channel_opts,
                     (img_size, img_size) if img_size else None, seed, latency_table)
    return run(cfg, weights, out_dir, plan, data, batch_size, log, measure)
