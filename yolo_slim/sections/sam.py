"""[sam] (AlexeyAB, spatial attention): out = act(prev ⊙ layer[from]), same shapes.

Channel rule: a product ties channels like a sum does: output channel c is a new node tied to
channel c of both factors, so a cut channel is cut in both. Exactness: a cut channel is the
constant a in one factor and b in the other, so the product is the constant act(a·b) — folded
like any cut channel. A cut in only one factor would leave a·x, not a constant: the tie forbids
it. A removed block's offset cannot pass ((x + c)·y is not x·y plus a constant)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from yolo_slim.sections.activations import activation_module
from yolo_slim.sections.base import (Carry, Section, SectionModule, Shape, Shapes, activation_of, fail,
                                     nonlinear_join, register)
from yolo_slim.sections.convolutional import SHORTCUT
from yolo_slim.sections.route import reject_head_inputs


class Product(SectionModule):
    """prev ⊙ outputs[source] then the activation ([sam], and [scale_channels] where the
    previous output is the 1×1 per-channel scale, broadcast)."""

    def __init__(self, source: int, activation: str):
        super().__init__()
        self.source, self.activation = source, activation
        self.reads = [source]
        self.act = activation_module(activation)

    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor | None]) -> torch.Tensor:
        return self.act(outputs[self.source] * x)


def single_source(sec: Section, d: dict[str, Any], i: int, shapes: Shapes) -> int:
    src = sec.refs(d, i)
    if len(src) != 1:
        raise fail(d, f"from={d.get('from')} must name exactly one layer")
    reject_head_inputs(d, src, shapes.defs, "from")
    return src[0]


def tie_product(gb, i: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """New output nodes, channel c tied to channel c of both factors."""
    out = gb.new_nodes(i, len(b), SHORTCUT)
    for c in range(len(b)):
        gb.union(int(out[c]), int(a[c]))
        gb.union(int(out[c]), int(b[c]))
    return out


class ProductSection(Section):
    """An element-wise product of the previous output and one `from=` layer, then an activation:
    the build, channel rule and constant rule [sam] and [scale_channels] share."""
    ref_keys = ("from",)
    join = "product"

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> Product:
        return Product(self.refs(d, i)[0], activation_of(d, "linear"))

    def channels(self, d: dict[str, Any], i: int, gb) -> np.ndarray:
        return tie_product(gb, i, gb.in_nodes(i), gb.nodes(self.refs(d, i)[0]))

    def propagate(self, d: dict[str, Any], i: int, m: Product, fc) -> Carry:
        a, b = fc.carry(i - 1), fc.carry(m.source)
        return nonlinear_join(fc, i, [a, b], lambda offs: offs[0] * offs[1], m.activation,
                              f"[{self.type}]")

    def passes_offset(self, d: dict[str, Any]) -> str | None:
        return f"[{self.type}] multiplies: (x + c)·y is not x·y plus a constant"


@register
class SamSection(ProductSection):
    type = "sam"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        activation_of(d, "linear")
        j = single_source(self, d, i, shapes)
        if shapes.of(j) != shapes.prev(i):
            raise fail(d, f"multiplies layer {j} {shapes.of(j)} with the previous layer's "
                       f"{shapes.prev(i)} (channels, height, width): they must be equal")
        return shapes.prev(i)
