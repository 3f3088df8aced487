"""[convolutional]: conv -> BN (darknet's eps 1e-5) or bias -> activation."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from yolo_slim.darknet.cfg import get_int
from yolo_slim.sections.activations import activation_fn, activation_module
from yolo_slim.sections.base import (Carry, Section, SectionModule, Shape, Shapes, activation_of, fail,
                                     register, require_default)

CONV, SHORTCUT = 1, 2  # node kinds of the channel graph (analysis/graph.py)


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


def has_bn(d: dict[str, Any]) -> bool:
    return bool(get_int(d, "batch_normalize", 0) or get_int(d, "cbn", 0))


class ConvBlock(SectionModule):
    def __init__(self, in_ch: int, filters: int, size: int, stride: tuple[int, int], padding: int,
                 groups: int, dilation: int, bn: bool, activation: str):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, filters, size, stride=stride, padding=padding * dilation,
                              dilation=dilation, groups=groups, bias=not bn)
        # momentum 0.03 ~ darknet's slow rolling-average; eps is darknet's 1e-5
        self.bn = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.03) if bn else None
        self.activation = activation
        self.act = activation_module(activation)

    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


@torch.no_grad()
def absorb(m: ConvBlock, off: torch.Tensor) -> None:
    """Fold a constant input offset into a conv: Σ_{in,ky,kx} W·off per output (per group)
    goes into running_mean (BN: y - rm is what BN sees) or the bias. float64, and only the input
    channels that carry an offset are read (a cut touches a few of a big kernel's columns)."""
    g = m.conv.groups
    o, ig = m.conv.out_channels, m.conv.in_channels // g
    if g == 1:
        idx = torch.nonzero(off).flatten()
        w = m.conv.weight.detach()[:, idx].double().sum((2, 3))  # [O, k]
        delta = w @ off[idx]
    else:
        w = m.conv.weight.detach().double().sum((2, 3))  # [O, I/G]
        delta = torch.bmm(w.view(g, o // g, ig), off.view(g, ig, 1)).flatten()
    if m.bn is not None:
        m.bn.running_mean -= delta.to(m.bn.running_mean.dtype)
    else:
        m.conv.bias += delta.to(m.conv.bias.dtype)


@register
class Convolutional(Section):
    type = "convolutional"
    absorbs_offset = True
    has_weights = True

    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        for key in ("antialiasing", "xnor", "binary", "flipped"):
            require_default(d, key, 0)
        if "share_index" in d:
            raise fail(d, "share_index is not supported")
        # these change which floats the .weights file holds for this layer: refuse, never misread
        require_default(d, "dontload", 0, " (it changes the .weights layout)")
        require_default(d, "dontloadscales", 0, " (it changes the .weights layout)")
        activation_of(d, "logistic")
        g = conv_geometry(d)
        c, h, w = shapes.prev(i)
        filters = get_int(d, "filters", 1)
        if filters < 1:
            raise fail(d, f"filters={filters} must be at least 1")
        if g["size"] < 1 or g["stride_x"] < 1 or g["stride_y"] < 1 or g["dilation"] < 1:
            raise fail(d, f"size={g['size']} stride={g['stride_y']}x{g['stride_x']} "
                       f"dilation={g['dilation']}: each must be at least 1")
        if c % g["groups"] or filters % g["groups"]:
            raise fail(d, f"groups={g['groups']} does not divide input {c} / filters {filters}")
        span, pad = g["dilation"] * (g["size"] - 1) + 1, 2 * g["padding"] * g["dilation"]
        oh, ow = (h + pad - span) // g["stride_y"] + 1, (w + pad - span) // g["stride_x"] + 1
        if oh < 1 or ow < 1:
            raise fail(d, f"a {g['size']}x{g['size']} kernel does not fit its {h}x{w} input")
        return filters, oh, ow

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> ConvBlock:
        g = conv_geometry(d)
        return ConvBlock(shapes.prev(i)[0], shapes.of(i)[0], g["size"],
                         (g["stride_y"], g["stride_x"]), g["padding"], g["groups"], g["dilation"],
                         has_bn(d), activation_of(d, "logistic"))

    def channels(self, d: dict[str, Any], i: int, gb) -> np.ndarray:
        out = gb.new_nodes(i, get_int(d, "filters", 1), CONV)
        gb.conv_nodes[i] = out
        groups = conv_geometry(d)["groups"]
        if groups > 1:  # a cut would have to keep every group's share equal: keep it whole
            gb.must_keep(out, f"grouped conv (groups={groups})")
            gb.must_keep(gb.in_nodes(i), f"input of grouped conv {i}", override=False)
        elif not has_bn(d):
            gb.must_keep(out, "no batch_normalize")
        return out

    @torch.no_grad()
    def propagate(self, d: dict[str, Any], i: int, m: ConvBlock, fc) -> Carry:
        inp = fc.carry(i - 1)
        if fc.fold and (inp.off != 0).any():
            absorb(m, inp.off)
        if fc.fold and inp.dead.any():  # the folded value at a dead input never matters
            g = m.conv.groups
            ig, og = m.conv.in_channels // g, m.conv.out_channels // g
            w = m.conv.weight.view(g, og, ig, *m.conv.weight.shape[2:])
            dead = np.flatnonzero(inp.dead)
            w[torch.from_numpy(dead // ig), :, torch.from_numpy(dead % ig)] = 0
        cut = fc.cut_out(i, m.conv.out_channels)
        out = Carry.zeros(m.conv.out_channels)
        if cut.any():
            assert m.bn is not None, "only convs with BN are cut (the graph and block rules say so)"
            idx = torch.from_numpy(np.flatnonzero(cut))
            out.off[idx] = activation_fn(m.activation)(m.bn.bias.detach().double()[idx])
            out.dead[cut] = True
            m.bn.weight[idx] = 0
            if fc.fold:
                m.bn.bias[idx] = 0
        return out

    def flops(self, d: dict[str, Any], i: int, shapes: Shapes, c_in: int, c_out: int) -> int:
        g = conv_geometry(d)
        _, oh, ow = shapes.of(i)
        return 2 * oh * ow * c_out * (c_in // g["groups"]) * g["size"] ** 2

    @torch.no_grad()
    def compact(self, old: ConvBlock, new: ConvBlock, keep_in: np.ndarray,
                keep_out: np.ndarray) -> None:
        out_idx = torch.from_numpy(np.flatnonzero(keep_out))
        w = old.conv.weight[out_idx]
        if old.conv.groups == 1:
            w = w[:, torch.from_numpy(np.flatnonzero(keep_in))]
        new.conv.weight.copy_(w)
        if old.bn is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new.bn, name).copy_(getattr(old.bn, name)[out_idx])
            new.bn.num_batches_tracked.copy_(old.bn.num_batches_tracked)
        else:
            new.conv.bias.copy_(old.conv.bias[out_idx])
