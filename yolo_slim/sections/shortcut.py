"""[shortcut]: the previous output plus the `from` outputs, then the activation.

AlexeyAB adds over each image's flat buffer, so a source with fewer channels adds into the first
C_src channels only, and one with more contributes its first C (yolov3-tiny-prn, csresnext50).
Channel rule: output channel c is a new node tied to channel c of the previous layer and of every
source that has a channel c, so a cut channel is cut in every summed tensor (a shortcut group
shares one mask). Compaction keeps that alignment: the tied channels are the first C_src of the
longer tensor, their kept ones stay first and in the same order in both compact tensors.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from yolo_slim.darknet.cfg import get_str
from yolo_slim.sections.activations import activation_module
from yolo_slim.sections.base import (Carry, Section, SectionModule, Shape, Shapes, activation_of, fail,
                                     nonlinear_join, register)
from yolo_slim.sections.convolutional import SHORTCUT
from yolo_slim.sections.route import reject_head_inputs


class Shortcut(SectionModule):
    def __init__(self, sources: list[int], activation: str):
        super().__init__()
        self.sources, self.activation = sources, activation
        self.reads = sources
        self.act = activation_module(activation)

    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor | None]) -> torch.Tensor:
        for i in self.sources:
            s = outputs[i]
            c, cs = x.shape[1], s.shape[1]
            if cs == c:
                x = x + s
            elif cs > c:
                x = x + s[:, :c]
            else:
                x = torch.cat([x[:, :cs] + s, x[:, cs:]], 1)
        return self.act(x)


@register
class ShortcutSection(Section):
    type = "shortcut"
    ref_keys = ("from",)
    join = "sum"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        if get_str(d, "weights_type", "none") != "none":
            raise fail(d, f"weights_type={d['weights_type']} (weighted shortcut) is not supported")
        activation_of(d, "linear")
        sources = self.refs(d, i)
        if not sources:
            raise fail(d, "needs 'from='")
        reject_head_inputs(d, sources, shapes.defs, "from")
        c, h, w = shapes.prev(i)
        for j in sources:
            if shapes.of(j)[1:] != (h, w):
                _, hj, wj = shapes.of(j)
                raise fail(d, f"adds layer {j} ({hj}x{wj}) to the previous layer's {h}x{w} map: "
                           "the sizes must match")
        return c, h, w

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shortcut:
        return Shortcut(self.refs(d, i), activation_of(d, "linear"))

    def channels(self, d: dict[str, Any], i: int, gb) -> np.ndarray:
        prev = gb.in_nodes(i)
        out = gb.new_nodes(i, len(prev), SHORTCUT)
        for j in self.refs(d, i):
            src = gb.nodes(j)
            for c in range(min(len(src), len(prev))):
                gb.union(int(out[c]), int(src[c]))
        for c in range(len(prev)):
            gb.union(int(out[c]), int(prev[c]))
        return out

    def propagate(self, d: dict[str, Any], i: int, m: Shortcut, fc) -> Carry:
        prev = fc.carry(i - 1)
        n = len(prev.dead)
        parts = [prev]
        for j in m.sources:  # each source as a full-width carry: absent channels add 0, live
            s = fc.carry(j)
            k = min(len(s.dead), n)
            full = Carry.zeros(n)
            full.off[:k], full.dead[:k] = s.off[:k], s.dead[:k]
            if k < n:  # channels this source does not reach: neutral for "all dead"
                full.dead[k:] = True
            parts.append(full)
        if m.activation == "linear":
            dead = np.logical_and.reduce([p.dead for p in parts])
            return Carry(sum(p.off for p in parts), dead)
        return nonlinear_join(fc, i, parts, lambda offs: sum(offs), m.activation, "[shortcut]")

    def passes_offset(self, d: dict[str, Any]) -> str | None:
        act = get_str(d, "activation", "linear")
        return None if act == "linear" else f"activation={act} (act(x + c) is not x plus a constant)"
