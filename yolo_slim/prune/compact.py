"""Compaction: slice a folded full-size model down to its kept channels and write new defs.

The new defs are the original defs (every key as the user wrote it, so darknet reads them the
same way) with only `filters=` changed on pruned convs; everything else follows from the graph
(routes and shortcuts carry the kept channels, `groups` slices stay equal by construction).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from yolo_slim.analysis.graph import ChannelGraph
from yolo_slim.nn.model import Darknet, conv_layers


def compact_defs(g: ChannelGraph, keep_node: np.ndarray) -> list[dict[str, Any]]:
    defs = copy.deepcopy(g.defs)
    for i, nodes in g.conv_nodes.items():
        n = int(keep_node[nodes].sum())
        if n != len(nodes):
            defs[i + 1]["filters"] = str(n)
    return defs


@torch.no_grad()
def compact_model(folded: Darknet, g: ChannelGraph, keep_node: np.ndarray) -> Darknet:
    """A new Darknet holding exactly the kept channels of `folded` (see fold.apply_masks)."""
    keep_in, keep = g.layer_keep(keep_node)
    new = Darknet(compact_defs(g, keep_node))
    for i, m in conv_layers(new):
        old = folded.module_list[i]
        out_idx = torch.from_numpy(np.flatnonzero(keep[i]))
        kin = keep[i - 1] if i > 0 else keep_in
        w = old.conv.weight[out_idx]
        if old.conv.groups == 1:
            w = w[:, torch.from_numpy(np.flatnonzero(kin))]
        m.conv.weight.copy_(w)
        if old.bn is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(m.bn, name).copy_(getattr(old.bn, name)[out_idx])
            m.bn.num_batches_tracked.copy_(old.bn.num_batches_tracked)
        else:
            m.conv.bias.copy_(old.conv.bias[out_idx])
    new.header, new.seen = tuple(folded.header), int(folded.seen)
    return new
