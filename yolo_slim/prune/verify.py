"""One cut, one check, for channel pruning and block removal alike.

`apply_cut` turns a decision (`cuts`: conv layer -> bool mask of cut output channels) into the
folded model (prune/fold.py) and the compact model (a `compact` function: channel slicing or
block removal). `verify` compares the compact model's raw head maps with the folded model's (must
be float rounding) and with the *masked* model's (γ of the cut channels zeroed, nothing folded:
the border gap; 0 where the cut channels are dead).

Exactness does not depend on the input size, so verification runs at a small input
(`verification_size`: the coarsest map 2×2, at least 64 px), where borders are a larger share of
every map — the gap shows more, and a yolov3-spp check costs ~1% of one at 608 px.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch

from yolo_slim.core.errors import CfgError
from yolo_slim.darknet.cfg import net_channels, net_size
from yolo_slim.nn.model import Darknet
from yolo_slim.prune.fold import propagate
from yolo_slim.prune.outputs import max_abs
from yolo_slim.sections import infer_shapes


def verification_size(module_defs: list[dict[str, Any]]) -> tuple[int, int]:
    """The smallest input (h, w), at least 64 px, at which every spatial map (not the 1×1 ones of
    a global [avgpool]) is at least 2×2 and the shape pass holds; else the cfg's own size."""
    h, w = net_size(module_defs)
    full = infer_shapes(module_defs, (h, w)).layers
    spatial = [k for k, s in enumerate(full) if s[1] > 1 and s[2] > 1]
    if not spatial:
        return h, w
    sy = max(1, round(h / min(full[k][1] for k in spatial)))
    sx = max(1, round(w / min(full[k][2] for k in spatial)))
    for k in range(1, 64):
        cand = (max(64, k * sy), max(64, k * sx))
        cand = (-(-cand[0] // sy) * sy, -(-cand[1] // sx) * sx)  # up to a multiple of the stride
        if cand[0] > h or cand[1] > w:
            break
        try:
            maps = infer_shapes(module_defs, cand).layers
        except CfgError:
            continue
        if all(min(maps[j][1], maps[j][2]) >= 2 for j in spatial):
            return cand
    return h, w


def apply_cut(model: Darknet, cuts: dict[int, np.ndarray],
              compact: Callable[[Darknet], Darknet]) -> tuple[Darknet, Darknet]:
    """(folded, compact) models for a cut; `model` is unchanged."""
    folded = copy.deepcopy(model).eval()
    propagate(folded, cuts, fold=True)
    return folded, compact(folded).eval()


@torch.no_grad()
def verify(model: Darknet, folded: Darknet, compact: Darknet, cuts: dict[int, np.ndarray],
           img_hw: tuple[int, int] | None = None, seed: int = 0) -> dict[str, Any]:
    """max |Δ| of raw head maps on one seeded random input: compact vs folded (float rounding)
    and compact vs the unfolded masked model (the border gap)."""
    hw = tuple(img_hw or verification_size(model.module_defs))
    x = torch.rand(1, net_channels(model.module_defs), *hw,
                   generator=torch.Generator().manual_seed(seed))
    masked = copy.deepcopy(model).eval()
    propagate(masked, cuts, fold=False)
    ref, out = folded.eval().forward_raw(x), compact.eval().forward_raw(x)
    scale = float(max(r.abs().max() for r in ref))
    d_fold, d_mask = max_abs(out, ref), max_abs(out, masked.forward_raw(x))
    return {"max_abs_vs_folded": d_fold, "max_abs_vs_masked_unfolded": d_mask,
            "max_abs_output": scale, "rel_vs_folded": d_fold / max(scale, 1e-12),
            "img_size": list(hw)}
