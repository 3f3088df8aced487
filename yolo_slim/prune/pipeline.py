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
from yolo_slim.nn.model import Darknet
from yolo_slim.prune.channels import PruneOptions, PruneResult, evaluate_maps, prune_model, score_name
from yolo_slim.prune.layer_run import (LayerPruneResult, plot_blocks, prune_layers_model,
                                       ratios_after_removal)
from yolo_slim.prune.layers import depth
from yolo_slim.prune.outputs import check_output_dir, sha256_file, write_model_files, write_report


@dataclass
class PrunePlan:
    shortcuts: int | None = None           # residual blocks to remove (None: no layer pruning)
    rank: str = "mean"                     # block score: mean or max |γ| of its last conv
    channels: PruneOptions | None = None   # channel pruning (None: none)
    img_size: tuple[int, int] | None = None  # FLOPs size (the cfg's if None)
    seed: int = 0                          # seed of the verification inputs


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
            "raised_by_floor_or_rounding", "verification", "kept_channels")}
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
             else f"{stem}: {opts.strategy}, threshold {c.threshold:.4g}")
    plot_channels(ch["before"], ch["after"], os.path.join(out_dir, "channels.png"), title)
    if p.layers is None:
        prunable = [c.graph.conv_nodes[i] for i in c.report["prunable_convs"]]
        gam = c.scores[np.concatenate(prunable)] if prunable else np.zeros(0)
        plot_gamma_hist(gam, os.path.join(out_dir, "gamma_hist.png"),
                        c.threshold if math.isfinite(c.threshold) else None,
                        title=f"{stem} {score_name(opts.importance)}")


def run(cfg: str | None, weights: str, out_dir: str, plan: PrunePlan, data: str | None = None,
        batch_size: int = 8, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load, prune by the plan, verify, write the output dir; returns the report."""
    from yolo_slim.nn.weights import load_model
    model = load_model(cfg, weights)
    stem = os.path.splitext(os.path.basename(cfg or weights))[0]
    check_output_dir(out_dir, stem, {"--cfg": cfg, "--weights": weights})
    p = prune(model, plan, log)
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
    write_report(rep, os.path.join(out_dir, "prune_report.json"))
    return rep
