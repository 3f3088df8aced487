"""Channel masks from BN |γ|: thresholds (absolute, global percent, FLOPs target), the
per-layer floor (--layer-keep), rounding to multiples (--round-to), and the classes of the
channel graph (a class of tied channels is kept or cut as one).

Strategies decide a class from the |γ| of its *deciders*:
- normal: convs whose channels meet a shortcut are never pruned (no deciders in those classes);
- shortcut: in a class that contains a shortcut sum, only the group's first conv decides;
- slim: every prunable conv decides, and the class is kept if any member is above the
  threshold (union of the group's masks).
A class with a must-keep node, or without any decider, is kept.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import YoloSlimError
from ..graph import INPUT, ChannelGraph, prunable_of
from ..report import conv_flops_table


def node_gammas(model, g: ChannelGraph) -> np.ndarray:
    """|γ| of every BN conv node (NaN for nodes without γ)."""
    out = np.full(len(g.root), np.nan)
    for i, nodes in g.conv_nodes.items():
        bn = model.module_list[i].bn
        if bn is not None:
            out[nodes] = bn.weight.detach().abs().double().cpu().numpy()
    return out


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
        self.layer_keep, self.round_to = layer_keep, round_to
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

    def percent_threshold(self, percent: float) -> float:
        """Threshold below which `percent` of the deciding |γ| lie."""
        if not 0.0 <= percent <= 1.0:
            raise YoloSlimError(f"--global-percent must be in [0, 1], got {percent}")
        vals = np.sort(self.decider_gammas())
        k = int(round(percent * len(vals)))
        return float(vals[k]) if k < len(vals) else math.inf

    def keep(self, thr: float, enforce: bool = True) -> np.ndarray:
        """Per-node keep vector for 'cut |γ| < thr', with floors and rounding when enforce."""
        g = self.g
        keep_root = ~self.has_dec_root | self.must_root
        d = self.deciders
        keep_root[g.root[d[self.gamma[d] >= thr]]] = True
        keep_node = keep_root[g.root]
        if enforce:
            self._enforce(keep_root, keep_node)
        return keep_node

    def _need(self, count: int, total: int) -> int:
        need = max(count, 1, math.ceil(self.layer_keep * total - 1e-9))
        if self.round_to > 1 and need < total:  # round up, never down: never to 0
            need = min(total, math.ceil(need / self.round_to) * self.round_to)
        return need

    def _enforce(self, keep_root: np.ndarray, keep_node: np.ndarray) -> None:
        """Raise every conv to its floor / multiple by keeping its largest-|γ| cut channels.
        Keeping a class can raise other convs too, so repeat until nothing changes."""
        changed = True
        while changed:
            changed = False
            for i, nodes in self.g.conv_nodes.items():
                k = keep_node[nodes]
                count = int(k.sum())
                need = self._need(count, len(nodes))
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

    # ---- FLOPs and statistics ----------------------------------------------------------------
    def flops(self, keep_node: np.ndarray) -> int:
        g = self.g
        return int(sum(f * int(keep_node[g.in_nodes(i)].sum()) * int(keep_node[g.conv_nodes[i]].sum())
                       for i, f in self.flops_factor.items()))

    def target_flops_threshold(self, fraction: float) -> float:
        """Smallest threshold whose compact model has at most fraction x the original FLOPs."""
        if not 0.0 < fraction <= 1.0:
            raise YoloSlimError(f"--target-flops must be in (0, 1], got {fraction}")
        target = fraction * self.flops_full
        cands = np.concatenate([[0.0], np.unique(self.decider_gammas()), [math.inf]])
        if self.flops(self.keep(math.inf)) > target:
            best = self.flops(self.keep(math.inf)) / self.flops_full
            raise YoloSlimError(f"--target-flops {fraction} is out of reach: cutting every prunable "
                                f"channel (with the floors) still leaves {best:.4f} of the FLOPs")
        lo, hi = 0, len(cands) - 1  # invariant: cands[hi] meets the target
        while lo < hi:
            mid = (lo + hi) // 2
            if self.flops(self.keep(cands[mid])) <= target:
                hi = mid
            else:
                lo = mid + 1
        # rounding and floors make FLOPs only nearly monotone in the threshold: walk up if needed
        while self.flops(self.keep(cands[hi])) > target:
            hi += 1
        return float(cands[hi])

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
