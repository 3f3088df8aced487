"""What a cut costs: one rule for the sparse trainer's controller and for the pruner.

A cut is a per-node keep vector of the channel graph. Its cost is the compact model's FLOPs, or
the latency the measured table (analysis/latency.py) predicts for the compact model's widths.
Before it is costed, a cut goes through the pruner's own rule (MaskSolver: the dead classes are
cut, every conv keeps at least one channel, counts are rounded up to their multiples by keeping
cut channels), so the trainer's "target met" is the latency or FLOPs of the file the pruner will
write for the same dead set — tests/test_cut_cost.py checks both against the written model.

`--round-to auto` (`auto_multiples`): per conv, the multiple its kept count is rounded up to —
the table's block (its `align`, 16 floats on AVX-512 for onnxruntime's NCHWc) where the table
measured that an unaligned count costs more on that conv's output axis or on an input axis of
a conv that reads it, else 1. Read from the measured table, not assumed per CPU: the channels
kept for alignment are dead ones (γ = β = 0, act(0) = 0), so the rounded cut is still exact.
Block multiples of 16 also meet onnxruntime's INT8 conv kernel (input and output channels
% 4 or % 8, at least 16 outputs where the layer had as many).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from yolo_slim.analysis.latency import LatencyTable
from yolo_slim.prune.masks import MaskSolver


def auto_multiples(solver: MaskSolver, table: LatencyTable) -> dict[int, int]:
    """Per conv of the solver's graph: the table's block where alignment pays (see above), else 1."""
    g = solver.g
    keys = table.bind(g.defs, solver.img_hw)
    align = int(table.meta.get("align", 8))
    pays_in = {i: table.entries[k]["penalty"][0] > 1 for i, k in keys.items()}
    pays_out = {i: table.entries[k]["penalty"][1] > 1 for i, k in keys.items()}
    readers: dict[int, set[int]] = {}  # class root -> convs that read a channel of it
    for j in g.conv_nodes:
        for r in np.unique(g.root[g.in_nodes(j)]).tolist():
            readers.setdefault(r, set()).add(j)
    out = {}
    for i, nodes in g.conv_nodes.items():
        read = {j for r in np.unique(g.root[nodes]).tolist() for j in readers.get(r, ())}
        out[i] = align if pays_out.get(i) or any(pays_in.get(j) for j in read) else 1
    return out


class CutCost:
    """FLOPs (table None) or predicted latency of the compact model a keep vector leaves."""

    def __init__(self, solver: MaskSolver, table: LatencyTable | None = None):
        self.solver, self.table = solver, table
        self.metric = "latency" if table is not None else "flops"
        self.keys = table.bind(solver.g.defs, solver.img_hw) if table is not None else {}
        self.full = self.cost(np.ones(len(solver.g.root), bool))

    def conv_cost(self, i: int, cin: int, cout: int) -> float:
        """One conv at these kept counts: its FLOPs, or its table ms (before calibration)."""
        if self.table is not None:
            return self.table.conv_ms(self.keys[i], cin, cout)
        return self.solver.flops_factor[i] * cin * cout

    def counts(self, keep_node: np.ndarray) -> tuple[dict[int, int], dict[int, int]]:
        g = self.solver.g
        return ({i: int(keep_node[g.in_nodes(i)].sum()) for i in g.conv_nodes},
                {i: int(keep_node[n].sum()) for i, n in g.conv_nodes.items()})

    def cost(self, keep_node: np.ndarray) -> float:
        """FLOPs, or predicted ms (the table's calibration applied), of the cut as it stands."""
        cin, cout = self.counts(keep_node)
        s = sum(self.conv_cost(i, cin[i], cout[i]) for i in cin)
        return self.table.total(s) if self.table is not None else float(s)

    def share(self, keep_node: np.ndarray) -> float:
        return self.cost(keep_node) / self.full

    def keep_of_dead(self, dead_node: np.ndarray) -> np.ndarray:
        """The pruner's --dead rule: what it keeps when exactly `dead_node` are dead."""
        return self.solver.dead_keep(dead_node)

    def share_of_dead(self, dead_node: np.ndarray) -> float:
        return self.share(self.keep_of_dead(dead_node))

    def describe(self) -> dict[str, Any]:
        m = self.solver.multiple
        return {"metric": self.metric, "full": self.full,
                "aligned_convs": sorted(i for i, v in m.items() if v > 1),
                "align": max(m.values()) if m else self.solver.round_to}


def cut_cost(g, strategy: str, img_hw: tuple[int, int], table: LatencyTable | None = None,
             round_to: int | str = "auto") -> CutCost:
    """The cost model of a graph for dead-set cuts (no score needed: dead channels tie at 0,
    as they do in the pruner, so both raise the same classes): floors at 1 channel, counts
    rounded by `round_to` (an int, or "auto": from the table; 1 without one)."""
    solver = MaskSolver(g, np.zeros(len(g.root)), strategy, 0.0,
                        round_to if isinstance(round_to, int) else 1, img_hw)
    if round_to == "auto" and table is not None:
        solver.multiple = auto_multiples(solver, table)
    return CutCost(solver, table)
