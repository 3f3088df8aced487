"""[avgpool]: global average, C×H×W -> C×1×1. mean(x + c) = mean(x) + c, so constants and
offsets pass through per channel."""
from __future__ import annotations

from typing import Any

import torch

from yolo_slim.sections.base import Section, SectionModule, Shape, Shapes, register


class GlobalAvgPool(SectionModule):
    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


@register
class AvgpoolSection(Section):
    type = "avgpool"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        return shapes.prev(i)[0], 1, 1

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> GlobalAvgPool:
        return GlobalAvgPool()
