"""The channel graph of a darknet cfg: which producer channels every layer's output carries.

Every output channel of a [convolutional], of an element-wise join ([shortcut], [sam],
[scale_channels]) and of the network input is a *node*. A layer's output is an ordered array of
node ids, given by its section's channel rule (`channels` in yolo_slim/sections/<type>.py):

- [convolutional] and joins: fresh nodes (a sum or product is a new value);
- [maxpool], [upsample], [avgpool], [dropout]: the input's nodes (channels pass through);
- [reorg3d]: the input's nodes tiled stride² times (space to depth);
- [route]: the concatenation of each source's nodes, sliced to ``group_id`` when ``groups > 1``;
- [yolo]: the input's nodes (they must all stay).

Pruning decides *classes* of nodes, kept or cut together (union-find):

- a [shortcut] node is tied to the nodes it sums, channel by channel: a cut channel must be cut in
  every summed tensor, so chains of shortcuts on one feature map share one mask (a shortcut group);
  a product ([sam], [scale_channels]) ties its factors the same way;
- ``[route] groups=g`` slices each source into g equal chunks: channel c is tied to c + k*C/g.
  Then every chunk keeps the same number of channels at the same relative places, so the compact
  tensor still splits into g equal chunks that hold exactly the kept channels of each original
  chunk. This keeps CSP producers prunable (both halves with equal counts) instead of whole.

Some nodes must stay (their whole class with them), each with a reason: the network input, convs
without BN (no γ to prune), grouped convs and their input channels (groups would no longer
divide), and every channel that reaches a [yolo] layer (its layout is fixed by anchors/classes).
No layer index is special: all of this follows from the cfg's structure.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from yolo_slim.core.cli import Parser, parse
from yolo_slim.core.errors import cli_main
from yolo_slim.darknet.cfg import net_channels, parse_cfg
from yolo_slim.sections import infer_shapes, section_of
from yolo_slim.sections.convolutional import CONV, SHORTCUT, has_bn

INPUT = 0  # node kinds: INPUT here, CONV and SHORTCUT (any element-wise join) from the sections
STRATEGIES = ("normal", "shortcut", "slim")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:  # path compression
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the lowest node id stays root


@dataclass
class ChannelGraph:
    defs: list[dict[str, Any]]
    input_nodes: np.ndarray                       # nodes of the network input
    layer_nodes: list[np.ndarray]                 # per layer: node id of every output channel
    node_layer: np.ndarray                        # owner layer of each node (-1 = input)
    node_ch: np.ndarray                           # channel index inside its owner
    node_kind: np.ndarray                         # INPUT / CONV / SHORTCUT
    root: np.ndarray = field(default=None)        # class id (union-find root) of each node
    node_reason: dict[int, str] = field(default_factory=dict)   # nodes that must stay, and why
    route_slices: list[tuple[int, int, int, int]] = field(default_factory=list)  # (route, src, groups, gid)
    conv_nodes: dict[int, np.ndarray] = field(default_factory=dict)  # conv layer -> its nodes

    @property
    def types(self) -> list[str]:
        return [d["type"] for d in self.defs[1:]]

    def in_nodes(self, i: int) -> np.ndarray:
        """Nodes a layer reads as its (previous-layer) input."""
        return self.layer_nodes[i - 1] if i > 0 else self.input_nodes

    # ---- class properties, all computed per node (value of its class) ----------------------
    def class_must_keep(self) -> np.ndarray:
        must = np.zeros(len(self.root), bool)
        if self.node_reason:
            must[self.root[list(self.node_reason)]] = True
        return must[self.root]

    def class_has_shortcut(self) -> np.ndarray:
        has = np.zeros(len(self.root), bool)
        has[self.root[self.node_kind == SHORTCUT]] = True
        return has[self.root]

    def class_first_conv(self) -> np.ndarray:
        """Lowest conv layer index in each node's class (len(defs) when it has no conv)."""
        first = np.full(len(self.root), len(self.defs), np.int64)
        conv = self.node_kind == CONV
        np.minimum.at(first, self.root[conv], self.node_layer[conv])
        return first[self.root]

    def has_bn(self, i: int) -> bool:
        return has_bn(self.defs[i + 1])

    def layer_keep(self, keep_node: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """A per-node keep vector -> (input keep, keep per layer output channel)."""
        return keep_node[self.input_nodes], [keep_node[n] for n in self.layer_nodes]

    def must_keep_convs(self) -> dict[int, str]:
        """Convs that stay whole whatever the strategy, with the reason."""
        must = self.class_must_keep()
        out = {}
        for i, nodes in self.conv_nodes.items():
            if not must[nodes].all():
                continue
            own = [self.node_reason[n] for n in nodes if n in self.node_reason]
            if own:
                out[i] = own[0]
            else:  # tied to a must-keep node elsewhere through a shortcut or a route slice
                r = self.root[nodes[0]]
                other = next(n for n in self.node_reason if self.root[n] == r)
                out[i] = f"tied to layer {self.node_layer[other]} ({self.node_reason[other]})"
        return out


class _Builder:
    """What a section's channel rule may do while the graph is built (sections/base.py)."""

    def __init__(self, g: ChannelGraph):
        self.g, self.uf = g, _UnionFind()
        self.layer, self.ch, self.kind = [], [], []
        self.conv_nodes, self.route_slices = g.conv_nodes, g.route_slices

    def new_nodes(self, owner: int, n: int, kind: int) -> np.ndarray:
        start = self.uf.add(n)
        self.layer.extend([owner] * n)
        self.ch.extend(range(n))
        self.kind.extend([kind] * n)
        return np.arange(start, start + n)

    def nodes(self, j: int) -> np.ndarray:
        return self.g.layer_nodes[j] if j >= 0 else self.g.input_nodes

    def in_nodes(self, i: int) -> np.ndarray:
        return self.nodes(i - 1)

    def union(self, a: int, b: int) -> None:
        self.uf.union(a, b)

    def must_keep(self, nodes: np.ndarray, reason: str, override: bool = True) -> None:
        """These nodes (and their whole classes) stay; `override=False` keeps an earlier reason."""
        for n in nodes:
            if override:
                self.g.node_reason[int(n)] = reason
            else:
                self.g.node_reason.setdefault(int(n), reason)


def build_graph(module_defs: list[dict[str, Any]]) -> ChannelGraph:
    """Walk the cfg once and build the channel graph: each section's channel rule (its
    `channels` in yolo_slim/sections) says what its output carries and what it ties."""
    infer_shapes(module_defs)  # a cfg that cannot run has no channel graph: say where it breaks
    g = ChannelGraph(module_defs, np.zeros(0, np.int64), [], None, None, None)
    b = _Builder(g)
    g.input_nodes = b.new_nodes(-1, net_channels(module_defs), INPUT)
    b.must_keep(g.input_nodes, "network input")
    for i, d in enumerate(module_defs[1:]):
        g.layer_nodes.append(section_of(d).channels(d, i, b))
    g.node_layer, g.node_ch, g.node_kind = np.array(b.layer), np.array(b.ch), np.array(b.kind)
    g.root = np.array([b.uf.find(a) for a in range(len(b.layer))])
    return g


def shortcut_groups_of(g: ChannelGraph) -> list[list[int]]:
    """Convs whose outputs are summed (through chains of shortcuts): each group shares a mask."""
    has = g.class_has_shortcut()
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    by_root: dict[int, int] = {}
    for i, nodes in g.conv_nodes.items():
        for n in nodes[has[nodes]]:
            r = int(g.root[n])
            if r in by_root:
                a, b = find(by_root[r]), find(i)
                parent[max(a, b)] = min(a, b)
            else:
                by_root[r] = i
                find(i)
    groups: dict[int, list[int]] = {}
    for i in parent:
        groups.setdefault(find(i), []).append(i)
    return sorted(sorted(v) for v in groups.values())


def prunable_of(g: ChannelGraph, strategy: str) -> list[int]:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    must, short = g.class_must_keep(), g.class_has_shortcut()
    out = []
    for i, nodes in g.conv_nodes.items():
        if not g.has_bn(i) or must[nodes].all():
            continue
        if strategy == "normal" and short[nodes].any():
            continue  # "normal" never touches a conv whose channels meet a shortcut
        out.append(i)
    return out


def shortcut_groups(module_defs: list[dict[str, Any]]) -> list[list[int]]:
    """Layer indices of convs that share one mask because their outputs are summed."""
    return shortcut_groups_of(build_graph(module_defs))


def prunable_convs(module_defs: list[dict[str, Any]], strategy: str) -> list[int]:
    """Layer indices of convs whose BN γ `strategy` ("normal", "shortcut", "slim") may prune."""
    return prunable_of(build_graph(module_defs), strategy)


def _segments(g: ChannelGraph, nodes: np.ndarray) -> str:
    """'12[0:32] + 15[0:64]': runs of consecutive channels of one owner."""
    runs: list[list[int]] = []
    for n in nodes:
        o, c = int(g.node_layer[n]), int(g.node_ch[n])
        if runs and runs[-1][0] == o and runs[-1][2] == c:
            runs[-1][2] += 1
        else:
            runs.append([o, c, c + 1])
    return " + ".join(f"{'in' if o < 0 else o}[{a}:{b}]" for o, a, b in runs)


def describe(module_defs: list[dict[str, Any]]) -> str:
    """The graph as text: per layer its channels, then groups, slices, prunable and kept convs."""
    g = build_graph(module_defs)
    lines = ["layer  type           ch  carries"]
    for i, (t, nodes) in enumerate(zip(g.types, g.layer_nodes)):
        d = g.defs[i + 1]
        sec = section_of(d)
        if sec.has_weights:
            src = f"new (reads {_segments(g, g.in_nodes(i))})"
        elif sec.join:
            src = f"{sec.join} of " + " + ".join(str(j) for j in sec.inputs(d, i))
        else:
            src = _segments(g, nodes)
        lines.append(f"{i:5d}  {t:13s} {len(nodes):4d}  {src}")
    lines.append("\nshortcut groups (one mask each):")
    lines += [f"  {grp}" for grp in shortcut_groups_of(g)] or ["  none"]
    lines.append("route slices (channel c tied to c + k*C/groups):")
    lines += [f"  route {r} takes chunk {gid}/{grp} of layer {j}"
              for r, j, grp, gid in g.route_slices] or ["  none"]
    for s in STRATEGIES:
        lines.append(f"prunable ({s}): {prunable_of(g, s)}")
    lines.append("kept whole:")
    lines += [f"  {i}: {why}" for i, why in sorted(g.must_keep_convs().items())] or ["  none"]
    return "\n".join(lines)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m yolo_slim.analysis.graph", description=__doc__)
    p.add_argument("cfg")
    a = parse(p, argv)
    if a is None:  # --help
        return 0
    print(describe(parse_cfg(a.cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
