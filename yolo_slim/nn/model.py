"""Darknet(module_defs): the registry (yolo_slim/sections) builds every layer; forward only runs
them. Train mode returns the raw head maps, one [B, na, ny, nx, 5+nc] tensor per [yolo] layer;
eval mode returns decoded boxes [B, N, 5+nc] in the layout of DESIGN.md (ordered by YOLO layer,
anchor, row, column; x, y, w, h in input pixels; sigmoid objectness and classes).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from yolo_slim.core.errors import CfgError, YoloSlimError
from yolo_slim.sections import SECTIONS, infer_shapes, section_of
from yolo_slim.sections.base import Shape, Shapes, resolve_index  # noqa: F401 (re-exported)
from yolo_slim.sections.convolutional import ConvBlock, conv_geometry  # noqa: F401 (re-exported)
from yolo_slim.sections.yolo import YOLOLayer


def route_sources(d: dict[str, Any], i: int) -> list[int]:
    return SECTIONS["route"].refs(d, i)


def shortcut_sources(d: dict[str, Any], i: int) -> list[int]:
    return SECTIONS["shortcut"].refs(d, i)


class Darknet(nn.Module):
    """A darknet cfg as a torch module. `module_defs` is kept (copied) for writing back."""

    def __init__(self, module_defs: list[dict[str, Any]]):
        super().__init__()
        self.module_defs = copy.deepcopy(module_defs)
        shapes = infer_shapes(self.module_defs)
        self.module_list = nn.ModuleList(
            section_of(d).build(d, i, shapes) for i, d in enumerate(self.module_defs[1:]))
        self.out_channels = [s[0] for s in shapes.layers]
        self.yolo_layers = [i for i, d in enumerate(self.module_defs[1:]) if section_of(d).is_head]
        if not self.yolo_layers:
            raise CfgError("the cfg has no [yolo] layer; only detectors are supported",
                           self.module_defs[0].get("_path"))
        # layers whose outputs later layers read by index; only those are kept during forward
        self.saved = sorted({j for m in self.module_list for j in m.reads})
        self.header = (0, 2, 5)  # darknet weights version written by AlexeyAB's darknet
        self.seen = 0

    @property
    def heads(self) -> list[YOLOLayer]:
        return [self.module_list[i] for i in self.yolo_layers]

    def forward_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw head maps, one [B, na, ny, nx, 5+nc] per [yolo] layer, in cfg order."""
        outputs: list[torch.Tensor | None] = []
        saved, heads, raw = set(self.saved), set(self.yolo_layers), []
        for i, m in enumerate(self.module_list):
            y = m(x, outputs)
            if i in heads:
                raw.append(y)  # a head's output is not the next layer's input
            else:
                x = y
            outputs.append(x if i in saved else None)
        return raw

    def decode(self, raw: list[torch.Tensor], img_hw: tuple[int, int]) -> torch.Tensor:
        """Raw head maps -> [B, N, 5+nc] boxes in input pixels."""
        return torch.cat([h.decode(p, img_hw) for h, p in zip(self.heads, raw)], 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        raw = self.forward_raw(x)
        return raw if self.training else self.decode(raw, tuple(x.shape[-2:]))

    @property
    def num_classes(self) -> int:
        return self.heads[0].nc


def conv_layers(model: Darknet) -> list[tuple[int, ConvBlock]]:
    """(layer index, block) of every [convolutional], in cfg order (= weights-file order)."""
    return [(i, m) for i, m in enumerate(model.module_list) if isinstance(m, ConvBlock)]


def build_model(cfg_path: str) -> Darknet:
    from yolo_slim.darknet.cfg import parse_cfg
    return Darknet(parse_cfg(cfg_path))


_PROBE = 2 ** 12 * 45  # divisible by every stride a cfg may use (powers of 2, 3, 5)


def largest_stride(module_defs: list[dict[str, Any]]) -> int:
    """The largest downsampling of the cfg (32 for YOLOv3, 2 for a one-conv detector, 64 for a
    P6 model), from the shape pass at two sizes every stride divides: maps that do not scale
    with the input (a global [avgpool] of a squeeze-excitation block) are no stride."""
    a = infer_shapes(module_defs, (_PROBE, _PROBE)).layers
    b = infer_shapes(module_defs, (2 * _PROBE, 2 * _PROBE)).layers
    sides = [min(h, w) for (_, h, w), (_, h2, w2) in zip(a, b) if (h2, w2) == (2 * h, 2 * w)]
    return max(1, round(_PROBE / min(sides))) if sides else 1


def check_img_size(module_defs: list[dict[str, Any]], hw: tuple[int, int],
                   flag: str = "--img-size") -> tuple[int, int]:
    """An input size must be a multiple of the cfg's largest stride (the cfg's own rule, not
    32); then the shape pass at that size (maps that join must meet) names a cfg line if not."""
    s = largest_stride(module_defs)
    for v in hw:
        if v < s or v % s:
            path = module_defs[0].get("_path") or ""
            where = f" ({path})" if path and not path.startswith("<") else ""
            raise YoloSlimError(f"{flag} {v} must be a multiple of {s}, the largest stride of "
                                f"the cfg{where}")
    infer_shapes(module_defs, (int(hw[0]), int(hw[1])))
    return int(hw[0]), int(hw[1])
