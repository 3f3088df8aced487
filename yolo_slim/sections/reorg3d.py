"""[reorg3d] (AlexeyAB): space to depth, out[(dy·s+dx)·C + c][y][x] = in[c][y·s+dy][x·s+dx].

Channel rule: every output channel is a spatial subsample of one input channel, so the output
carries the input's nodes tiled s² times. A kept/cut input channel is kept/cut in all s² copies;
the compact output is exactly the reorg of the compact input (block by block, kept channels in
order), and constants and offsets pass through unchanged. `reverse=1` (depth to space) mixes
channels spatially and is refused."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from yolo_slim.darknet.cfg import get_int
from yolo_slim.sections.base import (Carry, Section, SectionModule, Shape, Shapes, fail, register,
                                     require_default)


class Reorg3d(SectionModule):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        s = self.stride
        _, c, h, w = x.shape
        x = x.reshape(-1, c, h // s, s, w // s, s)  # b, c, y, dy, x, dx
        return x.permute(0, 3, 5, 1, 2, 4).reshape(-1, c * s * s, h // s, w // s)


@register
class Reorg3dSection(Section):
    type = "reorg3d"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        require_default(d, "reverse", 0, " (depth to space)")
        s = get_int(d, "stride", 1)
        c, h, w = shapes.prev(i)
        if s < 1 or h % s or w % s:
            raise fail(d, f"stride={s} must be at least 1 and divide the {h}x{w} input")
        return c * s * s, h // s, w // s

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> Reorg3d:
        return Reorg3d(get_int(d, "stride", 1))

    def channels(self, d: dict[str, Any], i: int, gb) -> np.ndarray:
        return np.tile(gb.in_nodes(i), get_int(d, "stride", 1) ** 2)

    def propagate(self, d: dict[str, Any], i: int, m: Reorg3d, fc) -> Carry:
        c, k = fc.carry(i - 1), m.stride ** 2
        return Carry(c.off.repeat(k), np.tile(c.dead, k))
