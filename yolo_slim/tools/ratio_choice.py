"""Per-unit cut ratios for a target, from a sensitivity table (tools/sensitivity.py measures
it: the metric drop of every unit cut alone at every ratio).

Greedy, on the joint cost of all units' cuts: a unit may go up to the largest ratio whose drop,
and every smaller ratio's drop, is at most --max-drop (the largest cut it tolerates alone).
Starting from no cut, repeatedly take the one-step increase with the most cost saved per unit of
measured drop added, until the target is met. The cost is a `Cost`: the FLOPs fraction
(--target-flops), or the latency the measured table (analysis/latency.py) predicts for the widths
left (--target-latency MS, --target-speedup X: the table's prediction for the unpruned model / X,
prune/latency_target.table_target as prune_channels.py computes it). Drops are measured one unit
at a time and do not add up exactly when several units are cut: the choice is a starting point
for fine-tuning, not a guarantee on the combined drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from yolo_slim.analysis.latency import LatencyTable
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.prune.cut_cost import CutCost
from yolo_slim.prune.masks import MaskSolver


@dataclass
class Cost:
    """What the greedy choice shrinks: `of(keep_node)` and the `goal` it must reach, in one unit
    (a FLOPs fraction, or predicted ms); `flag` and `unit` word the out-of-reach error."""
    of: Callable[[np.ndarray], float]
    goal: float
    flag: str  # e.g. "--target-flops 0.5"
    unit: str  # a format for a value of `of`, e.g. "{:.4f} of the FLOPs"


def flops_cost(solver: MaskSolver, target: float) -> Cost:
    if not 0.0 < target <= 1.0:
        raise YoloSlimError(f"--target-flops must be in (0, 1], got {target}")
    return Cost(CutCost(solver).share, target, f"--target-flops {target}", "{:.4f} of the FLOPs")


def latency_cost(solver: MaskSolver, table: LatencyTable, target_ms: float, flag: str) -> Cost:
    """The table's prediction for the widths a keep vector leaves: the cost model the pruner and
    the sparse trainer use (prune/cut_cost.py; bound once, the greedy asks thousands of times)."""
    return Cost(CutCost(solver, table).cost, target_ms, flag, "{:.4g} ms (predicted)")


def unit_keep(solver: MaskSolver, units: list[list[int]], ratios: Sequence[float]) -> np.ndarray:
    return solver.ratio_keep({u[0]: r for u, r in zip(units, ratios)})


def choose_ratios(solver: MaskSolver, table: dict[str, Any], cost: Cost,
                  max_drop: float) -> tuple[list[float], float]:
    """Greedy per-unit ratios meeting `cost.goal` (see module docstring); returns the ratio per
    unit and the cost reached. Raises if the tolerated cuts cannot reach it."""
    units, levels = table["units"], [0.0] + sorted(table["ratios"])
    drop = {(r["unit"], r["ratio"]): r["drop"] for r in table["rows"]}
    allowed = []
    for k in range(len(units)):
        a = 0
        while a + 1 < len(levels) and drop[(k, levels[a + 1])] <= max_drop:
            a += 1
        allowed.append(a)

    def cost_of(state: list[int]) -> float:
        return cost.of(unit_keep(solver, units, [levels[s] for s in state]))
    state = [0] * len(units)
    cur = cost_of(state)
    while cur > cost.goal:
        best = None
        for k in range(len(units)):
            if state[k] >= allowed[k]:
                continue
            nxt = state.copy()
            nxt[k] += 1
            f = cost_of(nxt)
            d0 = drop[(k, levels[state[k]])] if state[k] else 0.0
            added = max(drop[(k, levels[nxt[k]])] - d0, 0.0) + 1e-4
            value = (cur - f) / added
            if best is None or value > best[0]:
                best = (value, k, f)
        if best is None:
            raise YoloSlimError(f"{cost.flag} is out of reach under --max-drop {max_drop}: every "
                                f"unit at its largest tolerated cut leaves {cost.unit.format(cur)}")
        state[best[1]] += 1
        cur = best[2]
    return [levels[s] for s in state], cur


def layer_ratio_map(units: list[list[int]], unit_ratios: list[float]) -> dict[str, float]:
    return {str(i): r for u, r in zip(units, unit_ratios) if r > 0 for i in u}


TARGETS = ("target_flops", "target_latency", "target_speedup")


def target_cost(solver: MaskSolver, opts: Any, model_file: str,
                log: Callable[[str], None] = print) -> tuple[Cost | None, dict[str, Any]]:
    """The cost to shrink for the one target of `opts` (a SensitivityOptions; None: no target,
    nothing to choose) and what to record about it. A latency target loads --latency-table, else
    measures the table of `model_file` at the solver's size (cached: python -m yolo_slim.tools.latency)."""
    from yolo_slim.core.cli import flag_name
    given = [k for k in TARGETS if getattr(opts, k) is not None]
    if len(given) > 1:
        raise YoloSlimError(f"give one of {', '.join(map(flag_name, TARGETS))}, not "
                            + " and ".join(map(flag_name, given)))
    if not given:
        return None, {}
    if given == ["target_flops"]:
        return flops_cost(solver, opts.target_flops), {"target_flops": opts.target_flops}
    flag = f"{flag_name(given[0])} {getattr(opts, given[0])}"
    if not (opts.target_speedup >= 1 if opts.target_speedup is not None else opts.target_latency > 0):
        raise YoloSlimError(f"{flag}: a latency target must be > 0 ms, a speed-up >= 1")
    from yolo_slim.prune.latency_target import table_target
    path = opts.latency_table
    if path is None:
        from yolo_slim.tools.latency import ensure_table  # a runtime: only when measuring
        path = ensure_table(model_file, solver.img_hw, runtime=getattr(opts, "runtime", "onnxruntime"), log=log)
    table = LatencyTable.load(path)
    cost = latency_cost(solver, table, table_target(table, opts.target_latency, opts.target_speedup,
                                                    solver.g.defs), flag)
    return cost, {"target_latency_ms": cost.goal, "target_speedup": opts.target_speedup,
                  "predicted_before_ms": cost.of(np.ones(len(solver.g.root), bool)),
                  "latency_table": path}
