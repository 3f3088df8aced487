"""The section registry: one module per darknet [section] type (see base.py for what each owns).

`SECTIONS[type]` is the one place the rest of the project asks about a section: the model builder,
the shape pass, the channel graph, folding, block removal, FLOPs and renumbering.
"""
from __future__ import annotations

from typing import Any

from yolo_slim.core.errors import CfgError
from yolo_slim.darknet.cfg import net_channels, net_size
from yolo_slim.sections.base import SECTIONS, Section, Shapes, register  # noqa: F401 (the registry)
# importing the section modules registers them (in the order the error message lists them)
from yolo_slim.sections import (convolutional, maxpool, upsample, route, shortcut, yolo,  # noqa: F401
                                sam, scale_channels, reorg3d, avgpool, dropout)


def section_of(d: dict[str, Any]) -> Section:
    """The Section of a module_def, or a CfgError naming file and line."""
    sec = SECTIONS.get(d["type"])
    if sec is None:
        raise CfgError(f"layer type [{d['type']}] is not supported "
                       f"(supported: {', '.join(SECTIONS)})", d.get("_path"), d.get("_line"))
    return sec


def check_supported(module_defs: list[dict[str, Any]]) -> None:
    """Raise a CfgError naming the first section type the registry does not implement."""
    for d in module_defs[1:]:
        section_of(d)


def infer_shapes(module_defs: list[dict[str, Any]], img_hw: tuple[int, int] | None = None) -> "Shapes":
    """The shape pass: every layer's (channels, height, width) at input `img_hw` (the [net] size
    by default), checking on the way everything that parses but cannot run (kernels that do not
    fit, joins of different sizes, zero strides...). Errors name the section's file and line."""
    check_supported(module_defs)
    h, w = img_hw or net_size(module_defs)
    c = net_channels(module_defs)
    if c < 1 or h < 1 or w < 1:
        net = module_defs[0]
        raise CfgError(f"[net] channels={c} height={h} width={w}: each must be at least 1",
                       net.get("_path"), net.get("_line"))
    shapes = Shapes((c, h, w), module_defs)
    for i, d in enumerate(module_defs[1:]):
        shapes.layers.append(section_of(d).shape(d, i, shapes))
    return shapes
