"""Channel masks from BN |γ| (or any per-channel score, see importance.py): thresholds (absolute, global percent, FLOPs target), the
per-layer floor (--layer-keep), rounding to multiples (--round-to), and the classes of the
channel graph (a class of tied channels is kept or cut as one).

Strategies decide a class from the |γ| of its *deciders*:
- normal: convs whose channels meet a shortcut are never pruned (no deciders in those classes);
- shortcut: in a class that contains a shortcut sum, only the group's first conv decides;
- slim: every prunable conv decides, and the class is kept if any member is above the
  threshold (union of the group's masks).
A class with a must-keep node, or without any decider, is kept.

`ratio_keep` is the per-unit alternative to one global threshold (--layer-ratios, sensitivity):
each unit (shortcut group or single conv) cuts its own fraction of its lowest-scored classes.
"""
from __future__ import annotations

import math

import numpy as np

from yolo_slim.core.errors import TargetUnreachable, YoloSlimError
from yolo_slim.analysis.graph import CONV, INPUT, ChannelGraph, prunable_of
from yolo_slim.analysis.cost import conv_flops_table


class MaskSolver:
    """Everything needed to turn a threshold into a per-node keep vector, fast enough to be
    called inside the --target-flops search."""

    def __init__(self, g: ChannelGraph, abs_gamma: np.ndarray, strategy: str,
                 layer_keep: float = 0.0, round_to: int = 1, img_hw: tuple[int, int] = (416, 416)):
        if not 0.0 <= layer_keep <= 1.0:
            raise YoloSlimError(f"--layer-keep must be in [0, 1], got {layer_keep}")
        if round_to < 1:
            raise YoloSlimError(f"--round-to must be >= 1, got {round_to}")
        self.g, self.gamma, self.strategy = g, abs_gamma, strategy
        self.layer_keep, self.round_to, self.img_hw = layer_keep, round_to, tuple(img_hw)
        # per conv: the multiple its kept count is rounded up to instead of round_to
        # (--round-to auto: where the latency table says the runtime is faster; cut_cost.py)
        self.multiple: dict[int, int] = {}
        self.prunable = prunable_of(g, strategy)
        n = len(g.root)
        pnodes = np.zeros(n, bool)
        for i in self.prunable:
            pnodes[g.conv_nodes[i]] = True
        if strategy == "shortcut":  # followers of a shortcut group copy the first conv's mask
            first = g.class_first_conv()
            pnodes &= ~g.class_has_shortcut() | (g.node_layer == first)
        self.deciders = np.flatnonzero(pnodes & ~np.isnan(abs_gamma))
        self.must_root = np.zeros(n, bool)
        self.must_root[g.root[g.class_must_keep()]] = True
        self.has_dec_root = np.zeros(n, bool)
        self.has_dec_root[g.root[self.deciders]] = True
        # a strict order of the deciders, lowest score first: percent and FLOPs targets cut the
        # first n of it. A threshold cannot split tied scores (a fresh or barely trained model
        # has every |γ| = 1) and would jump from cutting nothing to cutting everything. Ties go
        # by the class's relative position among its conv's classes (a conv sliced by [route]
        # groups= has C/2 classes of channels c and c + C/2), then by class, so the members of
        # a class come together and a tie is cut evenly over layers.
        class_rel = np.full(n, np.inf)
        for nodes in g.conv_nodes.values():
            roots = g.root[nodes]
            _, first = np.unique(roots, return_index=True)
            ordered = roots[np.sort(first)]  # the conv's classes in channel order
            np.minimum.at(class_rel, ordered, np.arange(len(ordered)) / len(ordered))
        d = self.deciders
        self.dec_rank = np.empty(len(d), np.int64)
        self.dec_rank[np.lexsort((d, g.root[d], class_rel[g.root[d]], abs_gamma[d]))] = \
            np.arange(len(d))
        order = np.argsort(g.root, kind="stable")
        cuts = np.flatnonzero(np.diff(g.root[order])) + 1
        self.members = {int(g.root[grp[0]]): grp for grp in np.split(order, cuts)}
        # FLOPs: per conv 2*oh*ow*k^2/groups times kept in * kept out
        full = conv_flops_table(g.defs, img_hw)
        self.flops_full = int(sum(full.values()))
        self.flops_factor = {i: f / (len(g.in_nodes(i)) * len(g.conv_nodes[i])) for i, f in full.items()}

    # ---- thresholds -------------------------------------------------------------------------
    def decider_gammas(self) -> np.ndarray:
        return self.gamma[self.deciders]

    def percent_cut(self, percent: float) -> int:
        """How many deciders (lowest |γ| first) `percent` of them is."""
        if not 0.0 <= percent <= 1.0:
            raise YoloSlimError(f"--global-percent must be in [0, 1], got {percent}")
        return int(round(percent * len(self.deciders)))

    def cut_threshold(self, n_cut: int) -> float:
        """The score of the lowest decider that `n_cut` keeps: the threshold that cut amounts
        to (exactly, unless it splits tied scores)."""
        if n_cut >= len(self.deciders):
            return math.inf
        return float(self.gamma[self.deciders[self.dec_rank == n_cut][0]])

    def keep(self, thr: float, enforce: bool = True, n_cut: int | None = None) -> np.ndarray:
        """Per-node keep vector for 'cut |γ| < thr' (or, given n_cut, 'cut the n_cut lowest
        deciders'), with floors and rounding when enforce."""
        g = self.g
        keep_root = ~self.has_dec_root | self.must_root
        d = self.deciders
        dec_keep = self.gamma[d] >= thr if n_cut is None else self.dec_rank >= n_cut
        keep_root[g.root[d[dec_keep]]] = True
        keep_node = keep_root[g.root]
        if enforce:
            self.enforce(keep_root, keep_node)
        return keep_node

    def _need(self, count: int, total: int, conv: int | None = None) -> int:
        need = max(count, 1, math.ceil(self.layer_keep * total - 1e-9))
        m = self.multiple.get(conv, self.round_to)
        if m > 1 and need < total:  # round up, never down: never to 0
            need = min(total, math.ceil(need / m) * m)
        return need

    def enforce(self, keep_root: np.ndarray, keep_node: np.ndarray) -> None:
        """Raise every conv to its floor / multiple by keeping its largest-|γ| cut channels, in
        place. Keeping a class can raise other convs too, so repeat until nothing changes.
        Public: a cut chosen elsewhere (prune/latency_target.py) ends with the same floors."""
        changed = True
        while changed:
            changed = False
            for i, nodes in self.g.conv_nodes.items():
                k = keep_node[nodes]
                count = int(k.sum())
                need = self._need(count, len(nodes), i)
                if count >= need:
                    continue
                cut = nodes[~k]
                gam = np.nan_to_num(self.gamma[cut], nan=-1.0)
                for n in cut[np.argsort(-gam, kind="stable")]:
                    r = int(self.g.root[n])
                    if keep_root[r]:
                        continue
                    keep_root[r] = True
                    keep_node[self.members[r]] = True
                    if int(keep_node[nodes].sum()) >= need:
                        break
                changed = True

    # ---- dead channels (--dead, after sparse training with the prox step) ---------------------
    def dead_keep(self, dead: np.ndarray, enforce: bool = True) -> np.ndarray:
        """Per-node keep vector cutting exactly the dead classes: those with a decider, nothing
        forcing them, and every member conv channel dead (γ = β = 0, see `dead_nodes`)."""
        g = self.g
        alive = np.zeros(len(g.root), bool)
        alive[g.root[(g.node_kind == CONV) & ~dead]] = True
        keep_root = ~self.has_dec_root | self.must_root | alive
        keep_node = keep_root[g.root]
        if enforce:
            self.enforce(keep_root, keep_node)
        return keep_node

    def dead_report(self, dead: np.ndarray, percent: float | None = None,
                    threshold: float | None = None) -> dict:
        """How many deciders --dead cuts, and how many live ones a percent or threshold cut
        would add on top (they are not free: each changes the model's output)."""
        live = self.dead_keep(dead, enforce=False)[self.deciders]
        out = {"dead_deciders": int((~live).sum()), "deciders": len(self.deciders)}
        if percent is not None:
            out["live_cut_by_percent"] = int((live & (self.dec_rank < self.percent_cut(percent))).sum())
        if threshold is not None:
            out["live_cut_by_threshold"] = int((live & (self.gamma[self.deciders] < threshold)).sum())
        return out

    # ---- per-unit ratios (--layer-ratios, sensitivity) ----------------------------------------
    def cuttable_roots(self) -> np.ndarray:
        """Per class root: True when the class may be cut (has a decider, nothing forces it)."""
        return self.has_dec_root & ~self.must_root

    def units(self) -> list[list[int]]:
        """Prunable units: convs whose cuttable classes are tied (a shortcut group shares one mask,
        a conv sliced by [route] groups= ties its own halves) form one unit; others are alone.
        A ratio applies to a unit as a whole, because its members can only be cut together."""
        cut = self.cuttable_roots()
        owner: dict[int, int] = {}  # class root -> first conv seen
        parent: dict[int, int] = {}

        def find(a: int) -> int:
            while parent.setdefault(a, a) != a:
                a = parent[a]
            return a
        for i, nodes in self.g.conv_nodes.items():
            roots = np.unique(self.g.root[nodes])
            for r in roots[cut[roots]].tolist():
                find(i)
                if r in owner:
                    a, b = find(owner[r]), find(i)
                    parent[max(a, b)] = min(a, b)
                else:
                    owner[r] = i
        groups: dict[int, list[int]] = {}
        for i in parent:
            groups.setdefault(find(i), []).append(i)
        return sorted(sorted(v) for v in groups.values())

    def class_scores(self) -> np.ndarray:
        """Per class root: the largest decider score (the slim union: a class stays while any
        member needs it); -inf where no decider."""
        score = np.full(len(self.g.root), -math.inf)
        np.maximum.at(score, self.g.root[self.deciders], self.gamma[self.deciders])
        return score

    def ratio_keep(self, layer_ratios: dict[int, float], enforce: bool = True) -> np.ndarray:
        """Per-node keep vector cutting, in every unit, the given fraction of its cuttable classes
        with the lowest class score. A unit takes the smallest ratio given for any of its convs
        (keep = union of what the members ask, as in the slim strategy); convs not listed: 0."""
        units = self.units()
        unit_of = {i: k for k, u in enumerate(units) for i in u}
        ratio: dict[int, float] = {}
        for i, r in layer_ratios.items():
            i, r = int(i), float(r)
            if not 0.0 <= r <= 1.0 or math.isnan(r):
                raise YoloSlimError(f"--layer-ratios: layer {i}: ratio {r} is not in [0, 1]")
            if i not in unit_of:
                if r > 0:
                    what = "not a conv" if i not in self.g.conv_nodes else \
                        f"not prunable with strategy {self.strategy}"
                    raise YoloSlimError(f"--layer-ratios: layer {i} is {what}")
                continue
            k = unit_of[i]
            ratio[k] = min(ratio.get(k, r), r)
        g, cut_ok, score = self.g, self.cuttable_roots(), self.class_scores()
        keep_root = np.ones(len(g.root), bool)
        for k, r in ratio.items():
            roots = np.unique(np.concatenate([g.root[g.conv_nodes[i]] for i in units[k]]))
            roots = roots[cut_ok[roots]]
            n_cut = min(len(roots), math.floor(r * len(roots) + 0.5))
            order = np.argsort(score[roots], kind="stable")  # ties: lower class id cut first
            keep_root[roots[order[:n_cut]]] = False
        keep_node = keep_root[g.root]
        if enforce:
            self.enforce(keep_root, keep_node)
        return keep_node

    # ---- FLOPs and statistics ----------------------------------------------------------------
    def flops(self, keep_node: np.ndarray) -> int:
        g = self.g
        return int(sum(f * int(keep_node[g.in_nodes(i)].sum()) * int(keep_node[g.conv_nodes[i]].sum())
                       for i, f in self.flops_factor.items()))

    def target_flops_cut(self, fraction: float) -> int:
        """How many deciders to cut (lowest score first) for a compact model of at most
        fraction x the original FLOPs: the bisection's boundary, which is the fewest when FLOPs
        fall monotonically with the cut (floors and rounding can make them only nearly so)."""
        if not 0.0 < fraction <= 1.0:
            raise YoloSlimError(f"--target-flops must be in (0, 1], got {fraction}")
        target = fraction * self.flops_full
        n = len(self.deciders)

        def flops(k: int) -> int:
            return self.flops(self.keep(math.inf, n_cut=k))
        if flops(n) > target:
            raise TargetUnreachable(f"--target-flops {fraction} is out of reach: cutting every prunable "
                                f"channel (with the floors) still leaves {flops(n) / self.flops_full:.4f} "
                                "of the FLOPs")
        lo, hi = 0, n  # invariant: cutting hi meets the target
        while lo < hi:
            mid = (lo + hi) // 2
            if flops(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        return hi  # flops(hi) <= target: hi only ever takes values that meet it (or n)

    def gamma_stats(self) -> dict:
        """Per prunable conv |γ| quantiles, and the largest threshold that empties no layer
        when there is no floor (a conv keeps a channel while some class of it has a decider
        at or above the threshold, or cannot be cut at all)."""
        g = self.g
        score = np.full(len(g.root), -math.inf)
        np.maximum.at(score, g.root[self.deciders], self.gamma[self.deciders])
        score[~self.has_dec_root | self.must_root] = math.inf
        layers, limits = {}, {}
        for i in self.prunable:
            nodes = g.conv_nodes[i]
            q = np.quantile(self.gamma[nodes], [0, 0.25, 0.5, 0.75, 1.0])
            layers[i] = [float(v) for v in q]
            limits[i] = float(score[g.root[nodes]].max())
        safe = min(limits.values()) if limits else math.inf
        return {"quantiles": layers, "max_safe_threshold": safe,
                "limiting_layer": min(limits, key=limits.get) if limits else None}


def dead_nodes(model, g: ChannelGraph) -> np.ndarray:
    """Per node: a conv channel with BN whose γ and β are exactly 0. It outputs act(0), which is
    0 for leaky, relu, mish, swish and linear: cutting it changes nothing, borders included."""
    dead = np.zeros(len(g.root), bool)
    for i, nodes in g.conv_nodes.items():
        bn = getattr(model.module_list[i], "bn", None)
        if bn is not None:
            dead[nodes] = ((bn.weight.detach() == 0) & (bn.bias.detach() == 0)).cpu().numpy()
    return dead


def kept_channels(g: ChannelGraph, keep_node: np.ndarray) -> dict[int, list[int]]:
    """Kept channel indices per conv layer."""
    return {i: np.flatnonzero(keep_node[n]).tolist() for i, n in g.conv_nodes.items()}


def assert_consistent(g: ChannelGraph, keep_node: np.ndarray) -> None:
    """Internal check: tied channels agree, and no conv is emptied."""
    keep_root = np.zeros(len(g.root), bool)
    keep_root[g.root[keep_node]] = True
    assert (keep_root[g.root] == keep_node).all(), "a class is partly kept"
    for i, n in g.conv_nodes.items():
        assert keep_node[n].any(), f"conv {i} emptied"
    assert (g.node_kind[~keep_node] != INPUT).all(), "a network input channel was cut"
