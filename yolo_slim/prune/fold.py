"""β folding: move the constant output of cut channels into the layers that consume them.

A cut BN channel j (γ_j zeroed) outputs the constant c_j = act(β_j) everywhere. Constants travel
through the graph: unchanged through [maxpool] (−inf padding keeps a constant constant) and
[route], times `scale` through [upsample], and through [shortcut] as act_s(Σ c) (a cut channel is
cut in every summed tensor, see graph.py). A consumer conv with kernel W then receives, away from
zero-padded borders, Σ_{j,ky,kx} W[o,j,ky,kx]·c_j extra on output o: that goes into
`running_mean -= ...` (BN consumer) or `bias += ...`. Exact for 1×1 consumers; at the borders of a
k×k consumer the real model saw zeros in the padding instead of c_j (the "border gap" that
verification reports against the unfolded masked model).

`fold_pruned` edits a full-size model into the *folded* model: cut channels' γ=β=0 (they output
act(0)), constants folded, and consumer weights on cut inputs zeroed (so the value at a cut channel
never matters, even for activations with act(0) != 0). Slicing it away gives the compact model,
which must compute the same function to float rounding, borders included.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from yolo_slim.analysis.graph import ChannelGraph
from yolo_slim.nn.layers import activation_fn
from yolo_slim.nn.model import Darknet


class _Ctx:
    def __init__(self, model: Darknet, g: ChannelGraph, keep_in: np.ndarray,
                 keep: list[np.ndarray], fold: bool):
        self.model, self.g, self.keep, self.fold = model, g, keep, fold
        self.keep_in = keep_in
        self.consts: list[torch.Tensor] = []  # per layer, float64, meaningful at cut channels

    def keep_of(self, j: int) -> np.ndarray:
        return self.keep[j] if j >= 0 else self.keep_in

    def const_of(self, j: int) -> torch.Tensor:
        return self.consts[j] if j >= 0 else torch.zeros(len(self.keep_in), dtype=torch.float64)


def _conv(ctx: _Ctx, i: int, m) -> torch.Tensor:
    cut_in = np.flatnonzero(~ctx.keep_of(i - 1))
    if len(cut_in) and ctx.fold:
        assert m.conv.groups == 1, "the graph keeps grouped convs' inputs whole"
        w = m.conv.weight.detach().double()[:, cut_in]
        delta = w.sum((2, 3)) @ ctx.const_of(i - 1)[cut_in]
        if m.bn is not None:
            m.bn.running_mean -= delta.to(m.bn.running_mean.dtype)
        else:
            m.conv.bias += delta.to(m.conv.bias.dtype)
        m.conv.weight[:, cut_in] = 0
    cut = np.flatnonzero(~ctx.keep[i])
    const = torch.zeros(m.conv.out_channels, dtype=torch.float64)
    if len(cut):
        assert m.bn is not None, "the graph never cuts a conv without BN"
        const[cut] = activation_fn(m.activation)(m.bn.bias.detach().double()[cut])
        m.bn.weight[cut] = 0
        if ctx.fold:
            m.bn.bias[cut] = 0
    return const


def _passthrough(ctx: _Ctx, i: int, m) -> torch.Tensor:
    return ctx.const_of(i - 1)


def _upsample(ctx: _Ctx, i: int, m) -> torch.Tensor:
    return ctx.const_of(i - 1) * m.scale


def _route(ctx: _Ctx, i: int, m) -> torch.Tensor:
    return torch.cat([ctx.const_of(j).chunk(m.groups)[m.group_id] for j in m.layers])


def _shortcut(ctx: _Ctx, i: int, m) -> torch.Tensor:
    total = ctx.const_of(i - 1) + sum(ctx.const_of(j) for j in m.sources)
    return activation_fn(m.activation)(total)


def _yolo(ctx: _Ctx, i: int, m) -> torch.Tensor:
    assert ctx.keep_of(i - 1).all(), "the graph keeps every channel that reaches a [yolo]"
    return ctx.const_of(i - 1)


RULES: dict[str, Callable[[_Ctx, int, object], torch.Tensor]] = {
    "convolutional": _conv, "maxpool": _passthrough, "upsample": _upsample,
    "route": _route, "shortcut": _shortcut, "yolo": _yolo,
}


@torch.no_grad()
def apply_masks(model: Darknet, g: ChannelGraph, keep_node: np.ndarray, fold: bool = True) -> None:
    """In place. fold=True: the folded model (see module docstring). fold=False: the masked
    model, only γ of cut channels zeroed (they output act(β), consumers untouched)."""
    keep_in, keep = g.layer_keep(keep_node)
    ctx = _Ctx(model, g, keep_in, keep, fold)
    for i, m in enumerate(model.module_list):
        ctx.consts.append(RULES[g.types[i]](ctx, i, m))
