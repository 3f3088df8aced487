"""--target-latency / --target-speedup: per-layer widths that keep the most importance for the
predicted latency (analysis/latency.py's table), as a keep vector the usual fold -> compact ->
verify handles unchanged.

Greedy over the prunable units of MaskSolver (a shortcut group, a conv whose [route] groups=
halves are tied, or a single conv): each unit offers to cut its next lowest-scored classes, and
the move with the least importance lost per predicted millisecond saved is taken, until the
predicted latency meets the target. A unit offers two moves: the smallest step (one class, or
what keeps --round-to multiples), and — where the table shows that an unaligned count costs
more on a conv the unit touches — the step to the next count aligned to the runtime's block.
So a layer only drops to an unaligned width when the table says that is no slower. Floors
(--layer-keep, at least one channel) are never crossed; a move's saving counts the unit's own
convs (fewer outputs) and their consumers (fewer inputs).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from yolo_slim.analysis.latency import LatencyTable
from yolo_slim.core.errors import TargetUnreachable, YoloSlimError
from yolo_slim.prune.masks import MaskSolver


def _hits(g, nodes_of, cut_ok) -> dict[int, dict[int, int]]:
    """class root -> {conv: how many of its channels (nodes_of(conv)) are in that class}."""
    out: dict[int, dict[int, int]] = {}
    for i in g.conv_nodes:
        roots, cnt = np.unique(g.root[nodes_of(i)], return_counts=True)
        for r, c in zip(roots.tolist(), cnt.tolist()):
            if cut_ok[r]:
                out.setdefault(r, {})[i] = c
    return out


def table_target(table: LatencyTable, target_ms: float | None, speedup: float | None,
                 defs: list[dict[str, Any]] | None = None) -> float:
    """The latency target in the table's ms: given, or the table's prediction for the model
    being pruned (`defs`; the table's own cfg if None) / speedup — so a model pruned before (an
    iterative round) is made `speedup` times faster than it is, not than the original."""
    if target_ms is not None:
        return float(target_ms)
    if defs is not None:
        return table.predict(defs)["total_ms"] / float(speedup)
    full = table.total(sum(table.conv_ms(k, table.entries[k]["spec"]["cin"], table.entries[k]["spec"]["cout"])
                           for k in table.layers.values()))
    return full / float(speedup)


def _units(solver: MaskSolver, cut_ok: np.ndarray, score: np.ndarray, out_hits: dict, in_hits: dict,
           pays: dict[int, bool]) -> tuple[list[list[int]], list[int], list[bool], dict[int, set[int]]]:
    """What latency_keep moves, per unit of solver.units(): its cuttable class roots, lowest
    score first (ties: class id); the multiple its counts keep (--round-to, auto's per conv);
    whether an unaligned output count costs more on one of its convs. And per conv, the units
    whose moves change its counts (their best moves are re-priced after a move there)."""
    g = solver.g
    units, mults = [], []
    for u in solver.units():
        mults.append(math.lcm(solver.round_to, *[solver.multiple.get(i, 1) for i in u]))
        roots = np.unique(np.concatenate([g.root[g.conv_nodes[i]] for i in u]))
        roots = roots[cut_ok[roots]]
        units.append(roots[np.lexsort((roots, score[roots]))].tolist())
    touches: dict[int, set[int]] = {}
    aligned = []
    for k, roots in enumerate(units):
        aligned.append(any(pays[i] for r in roots for i in out_hits.get(r, {})))
        for r in roots:
            for i in list(out_hits.get(r, {})) + list(in_hits.get(r, {})):
                touches.setdefault(i, set()).add(k)
    return units, mults, aligned, touches


def latency_keep(solver: MaskSolver, table: LatencyTable, target_ms: float
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-node keep vector whose predicted latency (the table's) meets target_ms, keeping the
    most score per ms saved, and its numbers {predicted_before_ms, predicted_ms, target_ms, moves}."""
    if not target_ms > 0 or not math.isfinite(target_ms):
        raise YoloSlimError(f"latency target must be a positive number of ms, got {target_ms}")
    g = solver.g
    keys = table.bind(g.defs, solver.img_hw)
    align = int(table.meta.get("align", 8))
    pays = {i: table.entries[k]["penalty"][0] > 1 or table.entries[k]["penalty"][1] > 1
            for i, k in keys.items()}
    cut_ok, score = solver.cuttable_roots(), solver.class_scores()
    out_hits, in_hits = _hits(g, lambda i: g.conv_nodes[i], cut_ok), _hits(g, g.in_nodes, cut_ok)
    out_cnt = {i: len(n) for i, n in g.conv_nodes.items()}
    in_cnt = {i: len(g.in_nodes(i)) for i in g.conv_nodes}
    floor = {i: max(1, math.ceil(solver.layer_keep * n - 1e-9)) for i, n in out_cnt.items()}
    ms = {i: table.conv_ms(keys[i], in_cnt[i], out_cnt[i]) for i in keys}
    units, mults, aligned, touches = _units(solver, cut_ok, score, out_hits, in_hits, pays)
    pos = [0] * len(units)

    def after(k: int, n: int) -> tuple[dict, dict]:
        oc, ic = {}, {}
        for r in units[k][pos[k]:pos[k] + n]:
            for i, c in out_hits.get(r, {}).items():
                oc[i] = oc.get(i, out_cnt[i]) - c
            for i, c in in_hits.get(r, {}).items():
                ic[i] = ic.get(i, in_cnt[i]) - c
        return oc, ic

    def move(k: int) -> tuple[float, int, dict, dict] | None:
        """Best (ratio, n, out counts, in counts) of unit k's moves, or None."""
        left, best = len(units[k]) - pos[k], None
        mult = mults[k]
        goals = [mult] + ([mult * align // math.gcd(mult, align)] if aligned[k] else [])
        for m in goals:
            for n in range(1, min(left, 4 * max(goals)) + 1):
                oc, ic = after(k, n)
                if any(c < floor[i] for i, c in oc.items()):
                    break  # floors only get further away
                if any(c % m for c in oc.values()):
                    continue
                new = {i: table.conv_ms(keys[i], ic.get(i, in_cnt[i]), oc.get(i, out_cnt[i]))
                       for i in set(oc) | set(ic)}
                gain = sum(ms[i] - v for i, v in new.items())
                if gain > 1e-12:
                    cost = float(sum(score[r] for r in units[k][pos[k]:pos[k] + n]))
                    if best is None or cost / gain < best[0]:
                        best = (cost / gain, n, oc, ic)
                break
        return best

    before = table.total(sum(ms.values()))
    cand = [move(k) for k in range(len(units))]
    moves = 0
    while table.total(sum(ms.values())) > target_ms:
        live = [k for k, c in enumerate(cand) if c is not None]
        if not live:
            raise TargetUnreachable(
                f"latency target {target_ms:.3g} ms is out of reach: the narrowest widths the floors "
                f"allow are predicted at {table.total(sum(ms.values())):.3g} ms (full {before:.3g} ms)")
        k = min(live, key=lambda j: (cand[j][0], j))
        _, n, oc, ic = cand[k]
        out_cnt.update(oc)
        in_cnt.update(ic)
        for i in set(oc) | set(ic):
            ms[i] = table.conv_ms(keys[i], in_cnt[i], out_cnt[i])
        pos[k] += n
        moves += 1
        for j in {j for i in set(oc) | set(ic) for j in touches.get(i, ())} | {k}:
            cand[j] = move(j)
    keep_node, pred = _keep_of(solver, table, keys, units, pos)
    return keep_node, {"target_ms": target_ms, "predicted_before_ms": before, "predicted_ms": pred,
                       "moves": moves}


def _keep_of(solver: MaskSolver, table: LatencyTable, keys: dict[int, Any], units: list[list[int]],
             pos: list[int]) -> tuple[np.ndarray, float]:
    """The per-node keep vector of the greedy's cut (the first pos[k] roots of unit k) and the
    table's prediction for it, counted again from the vector rather than the greedy's counts."""
    g = solver.g
    keep_root = np.ones(len(g.root), bool)
    for k, roots in enumerate(units):
        keep_root[roots[:pos[k]]] = False
    keep_node = keep_root[g.root]
    solver.enforce(keep_root, keep_node)  # floors and multiples were honoured: changes nothing
    cin = {i: int(keep_node[g.in_nodes(i)].sum()) for i in g.conv_nodes}
    cout = {i: int(keep_node[n].sum()) for i, n in g.conv_nodes.items()}
    return keep_node, table.total(sum(table.conv_ms(keys[i], cin[i], cout[i]) for i in keys))
