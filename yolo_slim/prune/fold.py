"""Constant propagation, one implementation for channel cuts and removed blocks.

A cut is a set of conv output channels whose BN γ is zeroed (`cuts`: conv layer -> bool mask):
the channels channel pruning removes, or every channel of the last conv of a removed residual
block. In the *masked* model (γ zeroed only) each such channel outputs the constant act(β). The
*folded* model zeroes β too and moves every constant into the layers that consume it: each
section's `propagate` (yolo_slim/sections) says how a constant travels through it (a `Carry`:
dead channels and their constants, live channels and the offset a removed block left on them),
and a consumer conv absorbs it (`running_mean -= Σ W·c` with BN, `bias += Σ W·c` without) and
zeroes its weights on dead inputs.

Folding is exact for 1×1 consumers and in the interior of k×k ones; at zero-padded borders the
masked model saw the constant where the folded one sees zeros (the "border gap" verification
reports). A channel that is *dead* (γ = β = 0, issue 13) has constant act(0) = 0: no gap at all.
Slicing the folded model (compact.py) or dropping the removed blocks (blocks.py) gives the
compact model, which equals the folded one to float rounding, borders included.
"""
from __future__ import annotations

import numpy as np
import torch

from yolo_slim.analysis.graph import ChannelGraph
from yolo_slim.darknet.cfg import net_channels
from yolo_slim.nn.model import Darknet
from yolo_slim.sections import section_of
from yolo_slim.sections.base import Carry


class FoldContext:
    """What a section's `propagate` may ask while the model is walked (sections/base.py)."""

    def __init__(self, model: Darknet, cuts: dict[int, np.ndarray], fold: bool):
        self.fold, self.cuts = fold, cuts
        self.n_in = net_channels(model.module_defs)
        self.carries: list[Carry] = []

    def carry(self, j: int) -> Carry:
        return self.carries[j] if j >= 0 else Carry.zeros(self.n_in)

    def cut_out(self, i: int, n: int) -> np.ndarray:
        """Which of conv i's n output channels are cut."""
        return self.cuts.get(i, np.zeros(n, bool))


@torch.no_grad()
def propagate(model: Darknet, cuts: dict[int, np.ndarray], fold: bool = True) -> list[Carry]:
    """In place. fold=True: the folded model; fold=False: the masked model (γ of the cut
    channels zeroed, nothing else). Returns every layer's Carry."""
    fc = FoldContext(model, cuts, fold)
    for i, (d, m) in enumerate(zip(model.module_defs[1:], model.module_list)):
        fc.carries.append(section_of(d).propagate(d, i, m, fc))
    return fc.carries


def channel_cuts(g: ChannelGraph, keep_node: np.ndarray) -> dict[int, np.ndarray]:
    """A per-node keep vector of the channel graph -> the cut mask of every conv that loses
    channels."""
    return {i: ~keep_node[n] for i, n in g.conv_nodes.items() if not keep_node[n].all()}


def apply_masks(model: Darknet, g: ChannelGraph, keep_node: np.ndarray, fold: bool = True) -> None:
    """Channel pruning's fold (fold=True) or masked model (fold=False), in place."""
    propagate(model, channel_cuts(g, keep_node), fold)
