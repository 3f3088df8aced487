"""[maxpool] with darknet's padding: total `padding` (default size-1), left/top gets padding//2,
right/bottom the rest, padded positions count as -inf. max(x + c) = max(x) + c per channel, so
constants and offsets pass through unchanged (−inf padding never wins against a constant)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from yolo_slim.darknet.cfg import get_int
from yolo_slim.sections.base import Section, SectionModule, Shape, Shapes, fail, register, require_default


def pool_geometry(d: dict[str, Any]) -> tuple[int, int, int, int]:
    """(size, stride_y, stride_x, padding) as darknet's parse_maxpool resolves them."""
    stride = get_int(d, "stride", 1)
    sx, sy = get_int(d, "stride_x", stride), get_int(d, "stride_y", stride)
    size = get_int(d, "size", stride)
    return size, sy, sx, get_int(d, "padding", size - 1)


class MaxPool(SectionModule):
    def __init__(self, size: int, stride: tuple[int, int], padding: int):
        super().__init__()
        self.size, self.stride = size, stride
        lo = padding // 2
        self.pad = (lo, padding - lo, lo, padding - lo)

    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        # The same result as padding with -inf and pooling, without materialising the padded
        # map where that can be avoided (an exported Pad copies the whole input and breaks
        # onnxruntime's blocked layout around it: 28% of yolov3-tiny's CPU time at 416,
        # bench/ort_op_profile.py):
        lo_x, hi_x, lo_y, hi_y = self.pad
        h, w = int(x.shape[-2]), int(x.shape[-1])
        (sy, sx), k = self.stride, self.size
        if h >= k and w >= k and not lo_x and not lo_y and \
                (h + hi_y - k) // sy == (h - k) // sy and (w + hi_x - k) // sx == (w - k) // sx:
            return F.max_pool2d(x, k, self.stride)  # the padded row/column is never reached
        if lo_x == hi_x and lo_y == hi_y and max(lo_x, lo_y) <= k // 2:
            return F.max_pool2d(x, k, self.stride, padding=(lo_y, lo_x))  # implicit -inf padding
        if any(self.pad):
            x = F.pad(x, self.pad, value=float("-inf"))
        return F.max_pool2d(x, k, self.stride)


@register
class Maxpool(Section):
    type = "maxpool"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        require_default(d, "maxpool_depth", 0)
        require_default(d, "antialiasing", 0)
        size, sy, sx, pad = pool_geometry(d)
        if size < 1 or sy < 1 or sx < 1 or pad < 0:
            raise fail(d, f"size={size} stride={sy}x{sx} padding={pad}: size and strides must be "
                       "at least 1, padding at least 0")
        c, h, w = shapes.prev(i)
        oh, ow = (h + pad - size) // sy + 1, (w + pad - size) // sx + 1
        if oh < 1 or ow < 1:
            raise fail(d, f"a {size}x{size} window does not fit its {h}x{w} input")
        return c, oh, ow

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> MaxPool:
        size, sy, sx, pad = pool_geometry(d)
        return MaxPool(size, (sy, sx), pad)
