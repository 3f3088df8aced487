"""[upsample]: nearest neighbour × stride, times `scale` (a constant c becomes c·scale)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from yolo_slim.darknet.cfg import get_float, get_int
from yolo_slim.sections.base import Carry, Section, SectionModule, Shape, Shapes, fail, register


class Upsample(SectionModule):
    def __init__(self, stride: int, scale: float):
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=float(self.stride), mode="nearest")
        return x * self.scale if self.scale != 1.0 else x


@register
class UpsampleSection(Section):
    type = "upsample"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        s = get_int(d, "stride", 2)
        if s < 1:
            raise fail(d, f"stride={s} (a downsampling upsample) is not supported; must be at least 1")
        c, h, w = shapes.prev(i)
        return c, h * s, w * s

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> Upsample:
        return Upsample(get_int(d, "stride", 2), get_float(d, "scale", 1.0))

    def propagate(self, d: dict[str, Any], i: int, m: Upsample, fc) -> Carry:
        c = fc.carry(i - 1)
        return Carry(c.off * m.scale, c.dead)
