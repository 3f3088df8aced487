"""Channel pruning, end to end: masks -> β folding -> compaction -> verification -> files.

`prune_model` works on a model in memory (tests and layer pruning reuse it); prune_channels.py
runs it through prune/pipeline.py's `run_channels`: it loads, prunes, writes `<stem>.cfg`,
`<stem>.weights`, `<stem>.pt`, `prune_report.json`, `channels.png` and `gamma_hist.png` into the
output dir, and reads the written cfg + weights back to check they reproduce the compact model
bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from yolo_slim.darknet.cfg import net_size
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.analysis.graph import ChannelGraph, build_graph
from yolo_slim.nn.model import Darknet
from yolo_slim.analysis.cost import count_params, model_flops
from yolo_slim.prune.compact import compact_model
from yolo_slim.prune.fold import channel_cuts
from yolo_slim.prune.verify import apply_cut, verify as verify_cut
from yolo_slim.prune.masks import MaskSolver, assert_consistent, dead_nodes, kept_channels


@dataclass
class PruneOptions:
    strategy: str = "slim"
    global_percent: float | None = None
    threshold: float | None = None
    target_flops: float | None = None
    layer_keep: float = 0.0
    round_to: int | str = 1              # or "auto": the latency table's block where it pays
    img_size: tuple[int, int] | None = None  # (h, w) for FLOPs and verification; cfg's if None
    seed: int = 0
    importance: str = "bn"  # bn | l1 | rank: the per-channel score (yolo_slim/importance.py)
    layer_ratios: dict[int, float] | None = None  # per conv: fraction to cut (per unit, not global)
    rank_data: str | None = None  # .data whose train images give --importance rank its maps
    rank_batches: int = 2
    rank_batch_size: int = 8
    target_latency: float | None = None  # ms, predicted by the latency table
    target_speedup: float | None = None  # x faster than the table's whole-model prediction
    latency_table: str | None = None     # analysis/latency.py JSON (tools/latency.py measures it)
    latency_rounds: int = 3              # with a runtime to measure on: re-solves until measured ±5%
    dead: bool | None = None             # cut exactly the channels with γ = β = 0 (prox training)


@dataclass
class PruneResult:
    compact: Darknet
    folded: Darknet
    graph: ChannelGraph
    keep_node: np.ndarray
    threshold: float
    report: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = None  # per-node importance scores the masks were cut by


TARGETS = ("global_percent", "threshold", "target_flops", "layer_ratios", "target_latency",
           "target_speedup", "dead")


def choose_cut(solver: MaskSolver, opts: PruneOptions) -> tuple[float, int | None]:
    """(threshold, n_cut): --threshold cuts by value (n_cut None); --global-percent and
    --target-flops cut a number of deciders in score order (threshold = what that amounts to);
    --layer-ratios and latency targets have no global threshold (nan)."""
    given = [k for k in TARGETS if getattr(opts, k) is not None]
    if len(given) != 1:
        raise YoloSlimError("give exactly one of " + ", ".join("--" + k.replace("_", "-") for k in TARGETS))
    if given[0] in ("layer_ratios", "target_latency", "target_speedup", "dead"):
        return math.nan, None  # no global threshold: prune_model cuts per unit / per latency
    if opts.threshold is not None:
        if opts.threshold < 0 or math.isnan(opts.threshold):
            raise YoloSlimError(f"--threshold must be >= 0, got {opts.threshold}")
        return float(opts.threshold), None
    n_cut = solver.percent_cut(opts.global_percent) if opts.global_percent is not None \
        else solver.target_flops_cut(opts.target_flops)
    return solver.cut_threshold(n_cut), n_cut


def prune_model(model: Darknet, opts: PruneOptions, check: bool = True,
                log=lambda *a: None, scores: np.ndarray | None = None) -> PruneResult:
    """Prune `model` (unchanged) by its BN |γ| (or opts.importance, or the given per-node
    `scores`); returns the compact model and a report dict. `log` receives the score picture
    before anything is cut."""
    from yolo_slim.analysis.importance import node_scores
    model = model.eval()
    g = build_graph(model.module_defs)
    img_hw = tuple(opts.img_size or net_size(model.module_defs))
    if scores is None:
        scores = node_scores(model, g, opts.importance, opts.rank_data, img_hw,
                             opts.rank_batches, opts.rank_batch_size)
    solver = MaskSolver(g, scores, opts.strategy, opts.layer_keep,
                        opts.round_to if isinstance(opts.round_to, int) else 1, img_hw)
    aligned = _auto_round(solver, opts, log)
    stats = solver.gamma_stats()
    log(_gamma_text(stats, opts.importance))
    thr, n_cut = choose_cut(solver, opts)
    latency = dead_counts = None
    if opts.dead:
        dead = dead_nodes(model, g)
        keep_node, bare = solver.dead_keep(dead), solver.dead_keep(dead, enforce=False)
        dead_counts = solver.dead_report(dead, percent=0.5, threshold=0.01)
        log(f"--dead: {dead_counts['dead_deciders']} of {dead_counts['deciders']} prunable channels "
            f"are dead (γ = β = 0) and cut for free; --global-percent 0.5 would also cut "
            f"{dead_counts['live_cut_by_percent']} live ones, --threshold 0.01 "
            f"{dead_counts['live_cut_by_threshold']}")
    elif opts.layer_ratios is not None:
        keep_node = solver.ratio_keep(opts.layer_ratios)
        bare = solver.ratio_keep(opts.layer_ratios, enforce=False)
    elif opts.target_latency is not None or opts.target_speedup is not None:
        keep_node, latency = _latency_cut(solver, opts)
        bare = keep_node
    else:
        keep_node = solver.keep(thr, n_cut=n_cut)
        # which layers only the floor / rounding filled up
        bare = solver.keep(thr, enforce=False, n_cut=n_cut)
    assert_consistent(g, keep_node)
    raised = [i for i, n in g.conv_nodes.items() if keep_node[n].sum() != bare[n].sum()]
    if raised:
        log(f"--layer-keep/--round-to/at-least-1 raised {len(raised)} layers: {raised}")
    cuts = channel_cuts(g, keep_node)
    folded, compact = apply_cut(model, cuts, lambda f: compact_model(f, g, keep_node))
    before = {i: len(n) for i, n in g.conv_nodes.items()}
    after = {i: int(keep_node[n].sum()) for i, n in g.conv_nodes.items()}
    report: dict[str, Any] = {
        "strategy": opts.strategy, "importance": opts.importance, "threshold": thr,
        "deciders_cut": n_cut,
        "options": asdict(opts),
        "img_size": list(img_hw),
        "params": {"before": count_params(model), "after": count_params(compact)},
        "flops": {"before": model_flops(model, img_hw), "after": model_flops(compact, img_hw)},
        "channels": {"before": before, "after": after},
        "prunable_convs": solver.prunable,
        "raised_by_floor_or_rounding": raised,
        "gamma": stats,
        "kept_channels": {i: k for i, k in kept_channels(g, keep_node).items() if after[i] != before[i]},
    }
    if aligned is not None:
        report["round_to_auto"] = aligned
    if latency is not None:
        report["latency"] = latency
    if dead_counts is not None:
        report["dead"] = dead_counts
    if check:
        report["verification"] = verify_cut(model, folded, compact, cuts, seed=opts.seed)
    return PruneResult(compact, folded, g, keep_node, thr, report, scores)


def _auto_round(solver: MaskSolver, opts: PruneOptions, log) -> dict[str, Any] | None:
    """--round-to auto: per conv the table's block where it measured that alignment pays
    (prune/cut_cost.py); without a table nothing is rounded (said once)."""
    if opts.round_to != "auto":
        if not isinstance(opts.round_to, int) or opts.round_to < 1:
            raise YoloSlimError(f"--round-to must be an integer >= 1 or auto, got {opts.round_to!r}")
        return None
    if opts.latency_table is None:
        log("--round-to auto: no latency table (give --latency-table or --latency-report), "
            "so no count is rounded")
        return {"table": None, "multiples": {}}
    from yolo_slim.analysis.latency import LatencyTable
    from yolo_slim.prune.cut_cost import auto_multiples
    solver.multiple = auto_multiples(solver, LatencyTable.load(opts.latency_table))
    on = {i: m for i, m in solver.multiple.items() if m > 1}
    log(f"--round-to auto: {len(on)} of {len(solver.multiple)} convs round their kept count up to "
        f"a multiple of {max(on.values(), default=1)} (the table measured that alignment pays there)")
    return {"table": opts.latency_table, "multiples": on}


def _latency_cut(solver: MaskSolver, opts: PruneOptions) -> tuple[np.ndarray, dict[str, Any]]:
    from yolo_slim.analysis.latency import LatencyTable
    from yolo_slim.prune.latency_target import latency_keep, table_target
    if opts.latency_table is None:
        raise YoloSlimError("--target-latency/--target-speedup need a latency table (the scripts "
                            "measure one; see python -m yolo_slim.tools.latency)")
    if opts.target_speedup is not None and not opts.target_speedup >= 1:
        raise YoloSlimError(f"--target-speedup must be >= 1, got {opts.target_speedup}")
    table = LatencyTable.load(opts.latency_table)
    keep_node, info = latency_keep(solver, table, table_target(table, opts.target_latency,
                                                               opts.target_speedup, solver.g.defs))
    return keep_node, {**info, "table": opts.latency_table}


def evaluate_maps(models: list[Darknet], data: str, img_size: int, batch_size: int) -> list[dict]:
    """mAP@0.5 and mAP@0.5:0.95 of each model on the .data file's valid list."""
    from yolo_slim.eval.evaluate import evaluate_on_data  # evaluation is optional for pruning
    return evaluate_on_data(models, data, img_size, batch_size)


def score_name(importance: str) -> str:
    return "|gamma|" if importance == "bn" else f"{importance} score"


def _gamma_text(stats: dict[str, Any], importance: str = "bn") -> str:
    lines = [f"{score_name(importance)} per prunable conv:  layer  min  q25  median  q75  max"]
    for i, q in stats["quantiles"].items():
        lines.append(f"  {i:5d}  " + "  ".join(f"{v:.4g}" for v in q))
    lines.append(f"largest threshold that empties no layer (without --layer-keep): "
                 f"{stats['max_safe_threshold']:.6g} (limited by layer {stats['limiting_layer']})")
    return "\n".join(lines)


def cut_rule(threshold: float | str | None, digits: int = 6) -> str:
    """How the cut was chosen, for titles and summaries: a |γ| threshold, or (NaN, which the
    JSON report holds as "nan") `--dead`."""
    t = float("nan") if threshold is None else float(threshold)
    return "dead channels only" if math.isnan(t) else f"threshold {t:.{digits}g}"


def summary_text(rep: dict[str, Any]) -> str:
    from yolo_slim.analysis.cost import channel_table
    p, f, v = rep["params"], rep["flops"], rep["verification"]
    lines = [channel_table(rep["channels"]["before"], rep["channels"]["after"]),
             f"{cut_rule(rep['threshold'])} ({rep['strategy']}, importance "
             f"{rep.get('importance', 'bn')})",
             f"params {p['before']:,} -> {p['after']:,} ({100 * p['after'] / p['before']:.1f}%)",
             f"FLOPs  {f['before']:,} -> {f['after']:,} ({100 * f['after'] / f['before']:.1f}%) "
             f"at {rep['img_size'][0]}x{rep['img_size'][1]}",
             f"max |delta| compact vs folded full-size: {v['max_abs_vs_folded']:.3g} "
             f"(outputs up to {v['max_abs_output']:.3g}); vs unfolded masked (border effect): "
             f"{v['max_abs_vs_masked_unfolded']:.3g}; reloaded files: {v.get('max_abs_reloaded', 0):.3g}"]
    if "map" in rep:
        lines.append(f"mAP before {rep['map']['before']}  after {rep['map']['after']}")
    return "\n".join(lines)
