"""[yolo]: a detection head. Its module reshapes the head map to [B, na, ny, nx, 5+nc] (what
training and the loss read) and owns the one box decode every other place uses (eval, loss,
distillation, ONNX export): `decode_terms`.

Channel rule: every channel reaching a [yolo] must stay (anchors × (5 + classes) is fixed).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from yolo_slim.darknet.cfg import get_float, get_floats, get_int, get_ints
from yolo_slim.sections.base import Carry, FoldError, Section, SectionModule, Shape, Shapes, fail, register


def decode_terms(p: torch.Tensor, anchors: torch.Tensor, scale_x_y: float, new_coords: bool,
                 wh_log_max: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw head values [..., 5+nc] -> (xy offset in the cell, wh in the anchors' units,
    objectness+classes as probabilities), as darknet's [yolo] computes them. `wh_log_max`
    clamps the exponent (training: exp() of a wild early prediction must not overflow)."""
    if new_coords:  # the conv before already applied the logistic
        xy, wh, conf = p[..., :2], p[..., 2:4].square() * 4 * anchors, p[..., 4:]
    else:
        t = p[..., 2:4] if wh_log_max is None else p[..., 2:4].clamp(max=wh_log_max)
        xy, wh, conf = p[..., :2].sigmoid(), t.exp() * anchors, p[..., 4:].sigmoid()
    if scale_x_y != 1.0:
        xy = xy * scale_x_y - 0.5 * (scale_x_y - 1)
    return xy, wh, conf


def grid_and_stride(ny: int, nx: int, img_hw: tuple[int, int], device=None,
                    dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell (x, y) indices [1, 1, ny, nx, 2] and the (x, y) stride in input pixels; the stride
    is input size / map size per axis (so non-square inputs decode right)."""
    gy, gx = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                            torch.arange(nx, device=device, dtype=dtype), indexing="ij")
    stride = torch.tensor([img_hw[1] / nx, img_hw[0] / ny], device=device, dtype=dtype)
    return torch.stack([gx, gy], -1).view(1, 1, ny, nx, 2), stride


class YOLOLayer(SectionModule):
    def __init__(self, anchors: list[tuple[float, float]], nc: int, scale_x_y: float,
                 new_coords: bool):
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(-1, 2))
        self.na, self.nc, self.no = len(anchors), nc, nc + 5
        self.scale_x_y, self.new_coords = scale_x_y, new_coords

    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        ny, nx = x.shape[-2:]
        # view(-1, ...) keeps the batch dimension dynamic in an ONNX trace
        return x.view(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, p: torch.Tensor, img_hw: tuple[int, int]) -> torch.Tensor:
        """raw [B, na, ny, nx, no] -> [B, na*ny*nx, no]: x, y, w, h (pixels), obj, classes."""
        p = p.float()  # decode in fp32 so exp() cannot overflow under AMP
        grid, stride = grid_and_stride(p.shape[2], p.shape[3], img_hw, p.device)
        anchors = self.anchors.float().view(1, self.na, 1, 1, 2)
        xy, wh, conf = decode_terms(p, anchors, self.scale_x_y, self.new_coords)
        return torch.cat([(xy + grid) * stride, wh, conf], -1).view(p.shape[0], -1, self.no)


@register
class YoloSection(Section):
    type = "yolo"
    is_head = True

    def _anchors(self, d: dict[str, Any]) -> tuple[list[tuple[float, float]], int]:
        nc, num = get_int(d, "classes", 20), get_int(d, "num", 1)
        mask = get_ints(d, "mask", list(range(num)))
        anchors = get_floats(d, "anchors", [0.5] * (2 * num))
        if len(anchors) % 2:  # e.g. a missing comma: "61,45 61,45" strips to "61,4561,45"
            raise fail(d, f"anchors= has {len(anchors)} values, not (w, h) pairs")
        if any(not 0 <= m < len(anchors) // 2 for m in mask):
            raise fail(d, f"mask={d.get('mask')} does not index the {len(anchors) // 2} anchors")
        return [(anchors[2 * m], anchors[2 * m + 1]) for m in mask], nc

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        pairs, nc = self._anchors(d)
        c = shapes.prev(i)[0]
        need = len(pairs) * (nc + 5)
        if c != need:
            raise fail(d, f"its input has {c} channels but len(mask)*(classes+5) = {need}: "
                       f"set filters={need} in the conv before it")
        if get_int(d, "new_coords", 0) not in (0, 1):
            raise fail(d, f"new_coords={d['new_coords']} is not supported")
        return shapes.prev(i)

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> YOLOLayer:
        pairs, nc = self._anchors(d)
        return YOLOLayer(pairs, nc, get_float(d, "scale_x_y", 1.0), bool(get_int(d, "new_coords", 0)))

    def channels(self, d: dict[str, Any], i: int, gb) -> np.ndarray:
        prev = gb.in_nodes(i)
        gb.must_keep(prev, f"feeds [yolo] {i}", override=False)
        return prev

    def propagate(self, d: dict[str, Any], i: int, m: YOLOLayer, fc) -> Carry:
        c = fc.carry(i - 1)
        if fc.fold and (c.dead.any() or (c.off != 0).any()):
            raise FoldError(f"a cut channel or a constant offset reaches [yolo] {i}")
        return c

    def passes_offset(self, d: dict[str, Any]) -> str | None:
        return "a head's output cannot absorb a constant"
