"""Exact channel sparsity: a group soft-threshold on BN (γ, β), cost weights, a FLOPs controller.

A BN channel outputs γ·x̂ + β. The L1 subgradient s·sign(γ) never makes γ zero (it oscillates
around 0 with amplitude lr·s) and leaves β alone, so a "pruned" channel still carries the
constant act(β) and the cut is only exact after folding, and not at zero-padded borders. The
proximal step of the group lasso Σ_c w_c·‖(γ, β)_c‖ instead shrinks each channel's pair as a
group after every optimizer step:

    (γ, β)_c ← max(0, 1 − τ_c / ‖(γ, β)_c‖) · (γ, β)_c,   τ_c = lr / (1 − momentum) · s · w_c

so a channel whose pair is small enough lands on exactly (0, 0) and outputs act(0) = 0 (leaky,
relu, mish, swish, linear): removing it is exact everywhere, borders included. The factor is in
[0, 1], so the step never makes a zero nonzero. lr / (1 − momentum) is the steady-state step of
momentum SGD for a constant gradient: with it, the same s shrinks as fast as the subgradient
s·sign(γ) did through the momentum buffer, so the older tools' s values keep their meaning.

A *class* of the channel graph (a shortcut group's channel c across all its convs, a [route]
groups= pair of halves) is one group: it dies as a whole, so the pruner can cut it.

Weights w = cost / √m, m the class's member channels, normalised to mean 1 (a class's norm grows
as √m and what it does as m; see __init__): `uniform` cost = m (every channel alike, so w = √m,
the group lasso's √(group size)); `flops` cost = the FLOPs removing the class saves (its rows
in the producing convs and its input slices in every consumer, at full size), so the penalty
spends itself where the cost is — a channel of a 208×208 map weighs 256× one of a 13×13 map
with the same fan-in/out; `latency` cost = the latency removing the class saves on the
deployment runtime, from the measured table of analysis/latency.py (a conv whose time does not
fall with its width — too small to matter, or between the runtime's channel blocks — costs
little to keep, so its channels are shrunk little).

`FlopsController` adapts s during the run so the dead classes remove a target share of FLOPs;
with a target, only the classes it needs (the cheapest by ‖(γ, β)‖ / w) are shrunk each step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from yolo_slim.analysis.cost import conv_flops_table
from yolo_slim.analysis.graph import build_graph, prunable_of
from yolo_slim.analysis.latency import LatencyTable
from yolo_slim.analysis.latency_weights import class_latency_saving
from yolo_slim.prune.cut_cost import cut_cost

WEIGHTS = ("uniform", "flops", "latency")


class ChannelClasses:
    """The penalised channels of a model: every BN channel of the convs `strategy` may prune,
    grouped by the class of the channel graph they belong to (must-keep classes excluded)."""

    def __init__(self, model: torch.nn.Module, strategy: str, img_hw: tuple[int, int],
                 weight: str = "uniform", layer_keep: float = 0.0,
                 latency: LatencyTable | None = None, metric: str = "flops"):
        if weight not in WEIGHTS:
            raise ValueError(f"sparsity weight must be one of {WEIGHTS}, not {weight!r}")
        model = getattr(model, "module", model)
        g = build_graph(model.module_defs)
        cls_of_root = self._classes(model, g, strategy)
        self._flops_tables(g, img_hw, cls_of_root, layer_keep)
        cost = self._class_cost(g, cls_of_root, weight, latency)
        self.cost = cost  # what removing each class saves (channels, FLOPs or ms)
        # w = cost / √m for a class of m member channels (the group lasso's √(group size)): its
        # ‖(γ, β)‖ grows as √m while what it does grows as m, so ranking by ‖(γ, β)‖ / w ranks
        # by what it does per cost. With w = cost, uniform weights shrank a shortcut group
        # (m = 2..) as one channel: it never died and the target gutted everything else
        w = cost / np.sqrt(self.members)
        self.weight = torch.as_tensor(w / w.mean() if self.n else w, dtype=torch.float32)
        # what a dead set costs, by the pruner's own rule (prune/cut_cost.py): its floors, and
        # --round-to auto's multiples when there is a table; FLOPs, or the table's latency
        if metric not in ("flops", "latency") or (metric == "latency" and latency is None):
            raise ValueError(f"cost metric must be flops or latency (with a table), not {metric!r}")
        self.cut = cut_cost(g, strategy, img_hw, latency, "auto")
        if metric == "flops":
            self.cut.table, self.cut.metric = None, "flops"  # counts rounded by the table, FLOPs
            self.cut.full = self.cut.cost(np.ones(len(g.root), bool))
        # the greedy's estimate of the uncut model (cut_to_target runs every step: computed once)
        self._estimate_full = sum(self._conv_cost(j, len(c[1]), len(c[2]))
                                  for j, c in enumerate(self.convs))

    def _classes(self, model: torch.nn.Module, g, strategy: str) -> np.ndarray:
        """The penalised classes: per prunable layer its BN, its penalised channels and their
        class ids; member counts; each node's class (-1: never dead to the pruner). Returns the
        class id of each graph root (-1: not penalised)."""
        self.layers = prunable_of(g, strategy)
        must = g.class_must_keep()
        roots = np.unique(np.concatenate([g.root[g.conv_nodes[i]][~must[g.conv_nodes[i]]]
                                          for i in self.layers] or [np.zeros(0, np.int64)]))
        cls_of_root = np.full(len(g.root), -1, np.int64)
        cls_of_root[roots] = np.arange(len(roots))
        self.n = len(roots)
        self.bns, self.sel, self.cls = [], [], []  # per layer: BN, channels, their class ids
        self.node_cls = np.full(len(g.root), -1, np.int64)
        for i in self.layers:
            c = cls_of_root[g.root[g.conv_nodes[i]]]
            keep = np.flatnonzero(c >= 0)
            self.bns.append(model.module_list[i].bn)
            self.sel.append(torch.as_tensor(keep))
            self.cls.append(torch.as_tensor(c[keep]))
            self.node_cls[g.conv_nodes[i]] = c
        # member channels per class: at least 1 (every class is a root of a prunable conv)
        self.members = np.bincount(np.concatenate([c.numpy() for c in self.cls] or [np.zeros(0, int)]),
                                   minlength=self.n)
        return cls_of_root

    def _flops_tables(self, g, img_hw: tuple[int, int], cls_of_root: np.ndarray,
                      layer_keep: float) -> None:
        """FLOPs bookkeeping: conv i costs factor_i · kept inputs · kept outputs; what removing
        each class saves; which convs each class touches; the output floors of a target."""
        full = conv_flops_table(g.defs, img_hw)
        self.flops_full = float(sum(full.values()))
        self.convs = []  # (factor, class ids of input channels, of output channels; -1: never cut)
        self.conv_ids = []  # the layer index of each
        saving = np.zeros(self.n)
        for i, f in full.items():
            cin, cout = cls_of_root[g.root[g.in_nodes(i)]], cls_of_root[g.root[g.conv_nodes[i]]]
            fac = f / (len(cin) * len(cout))
            self.convs.append((fac, cin, cout))
            self.conv_ids.append(i)
            saving += fac * len(cout) * np.bincount(cin[cin >= 0], minlength=self.n)
            saving += fac * len(cin) * np.bincount(cout[cout >= 0], minlength=self.n)
        self.saving = saving
        # per conv: how many of its input / output channels each class holds (for the greedy
        # cut below), and the floor of output channels a FLOPs target may not cut into
        self.touch: list[list[tuple[int, int, int]]] = [[] for _ in range(self.n)]
        for j, (_, cin, cout) in enumerate(self.convs):
            n_in = np.bincount(cin[cin >= 0], minlength=self.n)
            n_out = np.bincount(cout[cout >= 0], minlength=self.n)
            for r in np.flatnonzero(n_in + n_out):
                self.touch[r].append((j, int(n_in[r]), int(n_out[r])))
        self.floor = [max(1, math.ceil(layer_keep * len(cout) - 1e-9)) for _, _, cout in self.convs]

    def _class_cost(self, g, cls_of_root: np.ndarray, weight: str,
                    latency: LatencyTable | None) -> np.ndarray:
        """What removing each class saves, as --sparsity-weight counts it: channels, FLOPs or
        the table's ms (a table in which no cut saves anything counts channels)."""
        if weight != "latency":
            return self.saving if weight == "flops" else self.members.astype(float)
        if latency is None:
            raise ValueError("sparsity weight 'latency' needs a latency table")
        cost = class_latency_saving(latency, g, cls_of_root, self.n)
        if self.n and not cost.any():
            cost = self.members.astype(float)
        return cost

    # a target counts as met within this share of it: 0 for FLOPs ("at most F"); a latency
    # target gets 2% (set by the sparsity hook): below the runtime's timing noise, and it stops
    # the cut from killing one more block for a 0.1% miss of a prediction
    slack = 0.0

    # False: only γ is shrunk and counted (--target-kill path-fold): a channel at γ = 0 outputs
    # the constant act(β), which the cut folds into its consumers instead of losing it
    with_beta = True

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        """‖(γ, β)‖ (or ‖γ‖ without with_beta) of every class (over all its member channels)."""
        sq = torch.zeros(self.n)
        for bn, sel, cls in zip(self.bns, self.sel, self.cls):
            v = bn.weight[sel].float() ** 2 + (bn.bias[sel].float() ** 2 if self.with_beta else 0.0)
            sq.index_add_(0, cls, v.cpu())
        return sq.sqrt()

    def dead(self) -> torch.Tensor:
        """Classes whose every member has γ = β = 0 exactly."""
        return self.norms() == 0

    @torch.no_grad()
    def scale(self, factor: torch.Tensor, models: list[torch.nn.Module] | None = None) -> None:
        """Multiply every class's (γ, β) by its factor — in the model these classes were built
        from, or in copies of it (same layer indices, e.g. the EMA)."""
        for k, (bn, sel, cls) in enumerate(zip(self.bns, self.sel, self.cls)):
            targets = [bn] if models is None else \
                [getattr(m, "module", m).module_list[self.layers[k]].bn for m in models]
            for b in targets:
                f = factor[cls].to(b.weight.device, b.weight.dtype)
                idx = sel.to(b.weight.device)
                b.weight[idx] = b.weight[idx] * f
                if self.with_beta:
                    b.bias[idx] = b.bias[idx] * f

    def prox(self, tau: torch.Tensor) -> torch.Tensor:
        """Group soft-threshold with per-class threshold τ; returns the factors applied."""
        norm = self.norms()
        factor = torch.where(norm > tau, 1 - tau / norm.clamp_min(1e-30), torch.zeros(()))
        self.scale(factor)
        return factor

    @torch.no_grad()
    def taylor(self) -> torch.Tensor:
        """Σ over member channels of (γ·∂L/∂γ + β·∂L/∂β)²: the first-order change of the loss
        if the channel's pair were zeroed, squared (one batch's gradients; the caller sums)."""
        sq = torch.zeros(self.n)
        for bn, sel, cls in zip(self.bns, self.sel, self.cls):
            if bn.weight.grad is None:
                continue
            v = bn.weight * bn.weight.grad + (bn.bias * bn.bias.grad if bn.bias.grad is not None else 0)
            sq.index_add_(0, cls, v[sel].float().cpu() ** 2)
        return sq

    def keep_if_cut(self, dead: torch.Tensor | np.ndarray) -> np.ndarray:
        """The per-node keep vector the pruner's --dead cut leaves for these dead classes."""
        d = np.append(np.asarray(dead, bool), False)  # index -1: not penalised, never dead
        return self.cut.keep_of_dead(d[self.node_cls])

    def flops_if_cut(self, dead: torch.Tensor | np.ndarray) -> float:
        """FLOPs of the model the pruner cuts from these dead classes, as a share of the full."""
        sv = self.cut.solver
        return sv.flops(self.keep_if_cut(dead)) / sv.flops_full

    def cost_if_cut(self, dead: torch.Tensor | np.ndarray) -> float:
        """The cost model's share (FLOPs, or predicted latency) of that cut model."""
        return self.cut.share(self.keep_if_cut(dead))

    def channel_weights(self) -> list[torch.Tensor]:
        """Per prunable layer, the subgradient's weight of every BN channel (1 where not
        penalised): the subgradient penalises each member channel on its own, so a channel
        weighs its class's cost per member, normalised to mean 1 over the channels (uniform:
        all 1, the older tools' s·sign(γ))."""
        per = self.cost / self.members
        mean = float(self.cost.sum() / max(1, self.members.sum()))  # Σ per·m / Σ m
        per = torch.as_tensor(per / (mean or 1.0), dtype=torch.float32)
        out = []
        for bn, sel, cls in zip(self.bns, self.sel, self.cls):
            w = torch.ones_like(bn.weight, dtype=torch.float32)
            w[sel] = per[cls]
            out.append(w)
        return out

    def _conv_cost(self, j: int, kin: int, kout: int) -> float:
        """conv j (of self.convs) at these kept counts, its output count rounded up as the cut
        rounds it: the greedy's incremental estimate of the cost model."""
        i = self.conv_ids[j]
        m = self.cut.solver.multiple.get(i, 1)
        full_out = len(self.convs[j][2])
        kout = max(1, kout)
        if m > 1 and kout < full_out:
            kout = min(full_out, -(-kout // m) * m)
        return self.cut.conv_cost(i, max(1, kin), kout)

    def cut_to_target(self, dead: torch.Tensor, target: float,
                      scores: torch.Tensor | None = None) -> torch.Tensor:
        """`dead` plus live classes, cheapest first (smallest ‖(γ, β)‖ / w, or scores / w), until
        the cost model's share if cut (cost_if_cut: FLOPs or predicted latency) is at most
        `target`; a class that would take a conv below its floor of output channels
        (layer_keep, at least 1) is skipped. Greedy on a per-conv estimate updated
        incrementally; once the estimate meets the target, the exact rule decides."""
        dead = dead.clone()
        target = target * (1 + self.slack)
        keep = np.append(~dead.numpy(), True)
        kin = [int(keep[cin].sum()) for _, cin, _ in self.convs]
        kout = [int(keep[cout].sum()) for _, _, cout in self.convs]
        cost = [self._conv_cost(j, a, b) for j, (a, b) in enumerate(zip(kin, kout))]
        full = self._estimate_full
        total = sum(cost)
        if self.cost_if_cut(dead) <= target:
            return dead
        live = torch.nonzero(~dead).flatten()
        value = self.norms() if scores is None else scores
        order = live[torch.argsort(value[live] / self.weight[live], stable=True)].tolist()
        every, since = max(1, len(order) // 100), 0
        for r in order:
            t = self.touch[r]
            if any(kout[j] - n_out < self.floor[j] for j, _, n_out in t if n_out):
                continue
            for j, n_in, n_out in t:
                kin[j] -= n_in
                kout[j] -= n_out
                total -= cost[j]
                cost[j] = self._conv_cost(j, kin[j], kout[j])
                total += cost[j]
            dead[r] = True
            # the estimate ignores rounded input counts (it errs high): near the goal, or every
            # few classes, the exact rule decides
            since += 1
            if (total <= 1.1 * target * full or since % every == 0) and self.cost_if_cut(dead) <= target:
                break
        return dead


@dataclass
class FlopsController:
    """s for a FLOPs target. Over the shrink phase (the first 1 − `recover` of the run) a path
    falls linearly from 1 to `target` by `ramp` of the phase; each optimizer step moves log s by
    gain · clip((f − path) / (1 − target), ±1) · Δprogress / (1 − recover), f = the FLOPs share
    the dead classes would leave: s rises while channels die too slowly and falls back once they
    are ahead, so s can change by at most e^gain over the phase. Then `freeze`: the dead set is
    completed to the target (cheapest live classes first, usually none or a few) and held at
    zero while s = 0 lets the live channels recover for the rest of the run."""
    target: float
    s: float
    recover: float = 0.3
    ramp: float = 0.7
    gain: float = 12.0
    progress: float = 0.0
    frozen: bool = False

    def path(self, p: float) -> float:
        end = max((1 - self.recover) * self.ramp, 1e-9)
        return 1 - (1 - self.target) * min(1.0, p / end)

    def shrinking(self, p: float) -> bool:
        return p < 1 - self.recover

    def update(self, p: float, f: float) -> float:
        dp, self.progress = max(p - self.progress, 0.0), p
        e = max(-1.0, min(1.0, (f - self.path(p)) / max(1 - self.target, 1e-9)))
        self.s *= math.exp(self.gain * e * dp / max(1 - self.recover, 1e-9))
        return self.s

    def state_dict(self) -> dict:
        return {"s": self.s, "progress": self.progress, "frozen": self.frozen}

    def load_state_dict(self, st: dict) -> None:
        self.s, self.progress, self.frozen = st["s"], st["progress"], st["frozen"]
