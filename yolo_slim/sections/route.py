"""[route]: concatenate channel slices [gid·C/groups, (gid+1)·C/groups) of its `layers=`.

Channel rule: the output carries each source's nodes, sliced. `groups=g` ties channel c of each
source to c + k·C/g, so every chunk keeps the same number of channels at the same relative
places and the compact tensor still splits into g equal chunks holding exactly the kept
channels of each original chunk (CSP producers stay prunable instead of whole)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from yolo_slim.darknet.cfg import get_int
from yolo_slim.sections.base import Carry, Section, SectionModule, Shape, Shapes, fail, register


def reject_head_inputs(d: dict[str, Any], sources: list[int], defs: list[dict[str, Any]],
                       key: str) -> None:
    # darknet's [yolo] output is its input with sigmoid on x, y, obj, cls; forward() passes the
    # raw map through instead, so reading a [yolo] layer's output would silently differ
    for j in sources:
        if j >= 0 and defs[j + 1]["type"] == "yolo":
            raise fail(d, f"{key}= reads layer {j}, a [yolo] layer; reading a head's output "
                       "is not supported")


class Route(SectionModule):
    def __init__(self, layers: list[int], groups: int, group_id: int):
        super().__init__()
        self.layers, self.groups, self.group_id = layers, groups, group_id
        self.reads = layers

    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor | None]) -> torch.Tensor:
        xs = [outputs[i] for i in self.layers]
        if self.groups > 1:
            xs = [t.chunk(self.groups, dim=1)[self.group_id] for t in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


def _slice(d: dict[str, Any]) -> tuple[int, int]:
    groups, gid = get_int(d, "groups", 1), get_int(d, "group_id", 0)
    if groups < 1 or not 0 <= gid < groups:
        raise fail(d, f"groups={groups} group_id={gid} is not a valid slice")
    return groups, gid


@register
class RouteSection(Section):
    type = "route"
    ref_keys = ("layers",)
    reads_previous = False

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        layers = self.refs(d, i)
        if not layers:
            raise fail(d, "needs 'layers='")
        reject_head_inputs(d, layers, shapes.defs, "layers")
        groups, _ = _slice(d)
        src = [shapes.of(j) for j in layers]
        if any(s[0] % groups for s in src):
            raise fail(d, f"groups={groups} does not divide the input channels {[s[0] for s in src]}")
        hw = {s[1:] for s in src}
        if len(hw) > 1:
            sizes = ", ".join(f"layer {j}: {s[1]}x{s[2]}" for j, s in zip(layers, src))
            raise fail(d, f"joins maps of different sizes ({sizes})")
        return sum(s[0] // groups for s in src), src[0][1], src[0][2]

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> Route:
        return Route(self.refs(d, i), *_slice(d))

    def channels(self, d: dict[str, Any], i: int, gb) -> np.ndarray:
        groups, gid = _slice(d)
        parts = []
        for j in self.refs(d, i):
            src = gb.nodes(j)
            if groups > 1:
                chunk = len(src) // groups
                for c in range(chunk):  # tie channel c to c + k*chunk: equal kept counts
                    for k in range(1, groups):
                        gb.union(int(src[c]), int(src[c + k * chunk]))
                gb.route_slices.append((i, j, groups, gid))
                src = src[gid * chunk:(gid + 1) * chunk]
            parts.append(src)
        return np.concatenate(parts)

    def propagate(self, d: dict[str, Any], i: int, m: Route, fc) -> Carry:
        parts = []
        for j in m.layers:
            c = fc.carry(j)
            n = len(c.dead) // m.groups
            parts.append(c.select(np.arange(m.group_id * n, (m.group_id + 1) * n)))
        return Carry(torch.cat([p.off for p in parts]), np.concatenate([p.dead for p in parts]))
