"""[scale_channels] (AlexeyAB, squeeze-and-excitation): out = act(layer[from] · prev[c]) where
prev is a 1×1×C map of per-channel scales and the output has layer[from]'s shape.

Channel rule as for [sam]: output channel c is tied to channel c of both the scaled map and the
scale vector, so a cut channel is cut in both and the output there is the constant act(a·b).
`scale_wh=1` (a spatial w×h×1 scale broadcast over channels) multiplies every channel by a live
map: a cut channel would stop being a constant, so it is refused."""
from __future__ import annotations

from typing import Any

from yolo_slim.sections.base import Shape, Shapes, activation_of, fail, register, require_default
from yolo_slim.sections.sam import ProductSection, single_source


@register
class ScaleChannelsSection(ProductSection):
    type = "scale_channels"

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        require_default(d, "scale_wh", 0, " (a spatial scale map)")
        activation_of(d, "linear")
        j = single_source(self, d, i, shapes)
        c, h, w = shapes.prev(i)
        if (h, w) != (1, 1) or c != shapes.of(j)[0]:
            raise fail(d, f"the previous layer must be a 1x1 map of one scale per channel of layer "
                       f"{j} ({shapes.of(j)[0]}); it is {c}x{h}x{w}")
        return shapes.of(j)
