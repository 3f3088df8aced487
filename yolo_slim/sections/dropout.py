"""[dropout]: identity at inference; during training darknet zeroes a `probability` share of the
values and scales the rest by 1/(1-p), as torch's Dropout does. Channels pass through."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from yolo_slim.darknet.cfg import get_float
from yolo_slim.sections.base import Section, SectionModule, Shape, Shapes, fail, register, require_default


class Dropout(SectionModule):
    def __init__(self, p: float):
        super().__init__()
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        return self.drop(x)


@register
class DropoutSection(Section):
    type = "dropout"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        require_default(d, "dropblock", 0, " (DropBlock)")
        p = get_float(d, "probability", 0.2)
        if not 0.0 <= p < 1.0:
            raise fail(d, f"probability={p} must be in [0, 1)")
        return shapes.prev(i)

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> Dropout:
        return Dropout(get_float(d, "probability", 0.2))
