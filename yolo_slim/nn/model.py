"""Darknet(module_defs): one builder per [section] type, registered in BUILDERS.

Train mode returns the raw head maps, one [B, na, ny, nx, 5+nc] tensor per [yolo] layer;
eval mode returns decoded boxes [B, N, 5+nc] in the layout of DESIGN.md (ordered by YOLO
layer, anchor, row, column; x, y, w, h in input pixels; sigmoid objectness and classes).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from yolo_slim.darknet.cfg import CfgError, get_float, get_floats, get_int, get_ints, get_str, net_channels
from yolo_slim.nn.layers import ACTIVATIONS, ConvBlock, MaxPool, Route, Shortcut, Upsample, YOLOLayer


@dataclass
class BuildContext:
    """What a builder may look at: earlier layers' output channels and the defs."""
    defs: list[dict[str, Any]]
    out_channels: list[int] = field(default_factory=list)  # per built layer
    in_channels: int = 3

    @property
    def prev_channels(self) -> int:
        return self.out_channels[-1] if self.out_channels else self.in_channels


def _fail(d: dict[str, Any], msg: str) -> CfgError:
    return CfgError(f"[{d['type']}] {msg}", d.get("_path"), d.get("_line"))


def _require_default(d: dict[str, Any], key: str, default: int | float, why: str = "") -> None:
    """A key whose non-default value we do not implement is an error, never ignored."""
    if key in d and get_float(d, key) != default:
        raise _fail(d, f"{key}={d[key]} is not supported{why}")


def _activation(d: dict[str, Any], default: str) -> str:
    name = get_str(d, "activation", default)
    if name not in ACTIVATIONS:
        raise _fail(d, f"activation '{name}' is not supported (supported: {', '.join(ACTIVATIONS)})")
    return name


def resolve_index(d: dict[str, Any], i: int, ref: int, key: str) -> int:
    """Darknet layer reference: negative = relative to layer i, else absolute."""
    j = i + ref if ref < 0 else ref
    if not 0 <= j < i:
        raise _fail(d, f"{key}={d[key]} points to layer {j}, outside layers 0..{i - 1}")
    return j


def conv_geometry(d: dict[str, Any]) -> dict[str, int]:
    """size, strides, padding, groups, dilation of a [convolutional] as darknet resolves them."""
    size = get_int(d, "size", 1)
    stride = get_int(d, "stride", 1)
    # AlexeyAB parse_convolutional: each of stride_x/stride_y below 1 (or absent) falls back to
    # `stride` on its own, so stride_x=2 alone gives strides (y, x) = (stride, 2)
    sx, sy = get_int(d, "stride_x", -1), get_int(d, "stride_y", -1)
    sx, sy = (sx if sx >= 1 else stride), (sy if sy >= 1 else stride)
    padding = size // 2 if get_int(d, "pad", 0) else get_int(d, "padding", 0)
    dilation = get_int(d, "dilation", 1) if size > 1 else 1
    return dict(size=size, stride_y=sy, stride_x=sx, padding=padding,
                groups=max(1, get_int(d, "groups", 1)), dilation=dilation)


def build_convolutional(d: dict[str, Any], i: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    for key in ("antialiasing", "xnor", "binary", "flipped"):
        _require_default(d, key, 0)
    if "share_index" in d:
        raise _fail(d, "share_index is not supported")
    # these change which floats the .weights file holds for this layer: refuse, never misread
    _require_default(d, "dontload", 0, " (it changes the .weights layout)")
    _require_default(d, "dontloadscales", 0, " (it changes the .weights layout)")
    g = conv_geometry(d)
    c, filters = ctx.prev_channels, get_int(d, "filters", 1)
    if filters < 1:
        raise _fail(d, f"filters={filters} must be at least 1")
    if c % g["groups"] or filters % g["groups"]:
        raise _fail(d, f"groups={g['groups']} does not divide input {c} / filters {filters}")
    bn = bool(get_int(d, "batch_normalize", 0) or get_int(d, "cbn", 0))
    m = ConvBlock(c, filters, g["size"], (g["stride_y"], g["stride_x"]), g["padding"],
                  g["groups"], g["dilation"], bn, _activation(d, "logistic"))
    return m, filters


def build_maxpool(d: dict[str, Any], i: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    _require_default(d, "maxpool_depth", 0)
    _require_default(d, "antialiasing", 0)
    stride = get_int(d, "stride", 1)
    sx, sy = get_int(d, "stride_x", stride), get_int(d, "stride_y", stride)
    size = get_int(d, "size", stride)
    return MaxPool(size, (sy, sx), get_int(d, "padding", size - 1)), ctx.prev_channels


def build_upsample(d: dict[str, Any], i: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    stride = get_int(d, "stride", 2)
    if stride < 1:
        raise _fail(d, f"stride={stride} (downsampling upsample) is not supported")
    return Upsample(stride, get_float(d, "scale", 1.0)), ctx.prev_channels


def route_sources(d: dict[str, Any], i: int) -> list[int]:
    return [resolve_index(d, i, r, "layers") for r in get_ints(d, "layers")]


def _no_head_inputs(d: dict[str, Any], sources: list[int], ctx: BuildContext, key: str) -> None:
    # darknet's [yolo] output is its input with sigmoid on x, y, obj, cls; forward() passes the
    # raw map through instead, so reading a [yolo] layer's output would silently differ
    for j in sources:
        if ctx.defs[j + 1]["type"] == "yolo":
            raise _fail(d, f"{key}= reads layer {j}, a [yolo] layer; reading a head's output "
                        "is not supported")


def build_route(d: dict[str, Any], i: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    layers = route_sources(d, i)
    _no_head_inputs(d, layers, ctx, "layers")
    groups, gid = get_int(d, "groups", 1), get_int(d, "group_id", 0)
    if groups < 1 or not 0 <= gid < groups:
        raise _fail(d, f"groups={groups} group_id={gid} is not a valid slice")
    chans = [ctx.out_channels[j] for j in layers]
    if any(ch % groups for ch in chans):
        raise _fail(d, f"groups={groups} does not divide the input channels {chans}")
    return Route(layers, groups, gid), sum(ch // groups for ch in chans)


def shortcut_sources(d: dict[str, Any], i: int) -> list[int]:
    return [resolve_index(d, i, r, "from") for r in get_ints(d, "from")]


def build_shortcut(d: dict[str, Any], i: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    if get_str(d, "weights_type", "none") != "none":
        raise _fail(d, f"weights_type={d['weights_type']} (weighted shortcut) is not supported")
    sources = shortcut_sources(d, i)
    _no_head_inputs(d, sources, ctx, "from")
    c = ctx.prev_channels
    for j in sources:
        if ctx.out_channels[j] != c:
            raise _fail(d, f"adds layer {j} ({ctx.out_channels[j]} channels) to {c} channels; "
                        "darknet's partial-channel add is not supported")
    return Shortcut(sources, _activation(d, "linear")), c


def build_yolo(d: dict[str, Any], i: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    nc = get_int(d, "classes", 20)
    num = get_int(d, "num", 1)
    mask = get_ints(d, "mask", list(range(num)))
    anchors = get_floats(d, "anchors", [0.5] * (2 * num))
    if len(anchors) % 2 or any(not 0 <= m < len(anchors) // 2 for m in mask):
        raise _fail(d, f"mask={d.get('mask')} does not index the {len(anchors) // 2} anchors")
    need = len(mask) * (nc + 5)
    if ctx.prev_channels != need:
        raise _fail(d, f"its input has {ctx.prev_channels} channels but len(mask)*(classes+5) "
                    f"= {need}: set filters={need} in the conv before it")
    new_coords = get_int(d, "new_coords", 0)
    if new_coords not in (0, 1):
        raise _fail(d, f"new_coords={new_coords} is not supported")
    pairs = [(anchors[2 * m], anchors[2 * m + 1]) for m in mask]
    return YOLOLayer(pairs, nc, get_float(d, "scale_x_y", 1.0), bool(new_coords)), ctx.prev_channels


BUILDERS: dict[str, Callable[[dict[str, Any], int, BuildContext], tuple[nn.Module, int]]] = {
    "convolutional": build_convolutional,
    "maxpool": build_maxpool,
    "upsample": build_upsample,
    "route": build_route,
    "shortcut": build_shortcut,
    "yolo": build_yolo,
}


def check_supported(module_defs: list[dict[str, Any]]) -> None:
    """Raise a CfgError naming the first section type the builder does not implement."""
    for d in module_defs[1:]:
        if d["type"] not in BUILDERS:
            raise CfgError(f"layer type [{d['type']}] is not supported "
                           f"(supported: {', '.join(BUILDERS)})", d.get("_path"), d.get("_line"))


class Darknet(nn.Module):
    """A darknet cfg as a torch module. `module_defs` is kept (copied) for writing back."""

    def __init__(self, module_defs: list[dict[str, Any]]):
        super().__init__()
        check_supported(module_defs)
        self.module_defs = copy.deepcopy(module_defs)
        ctx = BuildContext(self.module_defs, in_channels=net_channels(self.module_defs))
        self.module_list = nn.ModuleList()
        for i, d in enumerate(self.module_defs[1:]):
            m, c = BUILDERS[d["type"]](d, i, ctx)
            self.module_list.append(m)
            ctx.out_channels.append(c)
        self.out_channels = ctx.out_channels
        if not any(isinstance(m, YOLOLayer) for m in self.module_list):
            raise CfgError("the cfg has no [yolo] layer; only detectors are supported",
                           self.module_defs[0].get("_path"))
        self.yolo_layers = [i for i, m in enumerate(self.module_list) if isinstance(m, YOLOLayer)]
        # layers whose outputs later layers read by index; only those are kept during forward
        self.saved = sorted({j for m in self.module_list
                             for j in getattr(m, "layers", []) + getattr(m, "sources", [])})
        self.header = (0, 2, 5)  # darknet weights version written by AlexeyAB's darknet
        self.seen = 0

    @property
    def heads(self) -> list[YOLOLayer]:
        return [self.module_list[i] for i in self.yolo_layers]

    def forward_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw head maps, one [B, na, ny, nx, 5+nc] per [yolo] layer, in cfg order."""
        outputs: list[torch.Tensor | None] = []
        saved, raw = set(self.saved), []
        for i, m in enumerate(self.module_list):
            if isinstance(m, Route):
                x = m(outputs)
            elif isinstance(m, Shortcut):
                x = m(x, outputs)
            elif isinstance(m, YOLOLayer):
                raw.append(m(x))
            else:
                x = m(x)
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
