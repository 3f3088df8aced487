"""Compaction: slice a folded full-size model down to its kept channels and write new defs.

The new defs are the original defs (every key as the user wrote it, so darknet reads them the
same way) with only `filters=` changed on pruned convs; everything else follows from the graph
(routes, shortcuts and products carry the kept channels, `groups` slices stay equal by
construction). Each section copies its own kept parameters (`compact` in yolo_slim/sections).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from yolo_slim.analysis.graph import ChannelGraph
from yolo_slim.nn.model import Darknet
from yolo_slim.sections import section_of


def compact_defs(g: ChannelGraph, keep_node: np.ndarray) -> list[dict[str, Any]]:
    defs = copy.deepcopy(g.defs)
    for i, nodes in g.conv_nodes.items():
        n = int(keep_node[nodes].sum())
        if n != len(nodes):
            defs[i + 1]["filters"] = str(n)
    return defs


@torch.no_grad()
def compact_model(folded: Darknet, g: ChannelGraph, keep_node: np.ndarray) -> Darknet:
    """A new Darknet holding exactly the kept channels of `folded` (see fold.py)."""
    keep_in, keep = g.layer_keep(keep_node)
    new = Darknet(compact_defs(g, keep_node))
    for i, (d, old, m) in enumerate(zip(g.defs[1:], folded.module_list, new.module_list)):
        section_of(d).compact(old, m, keep[i - 1] if i > 0 else keep_in, keep[i])
    new.header, new.seen = tuple(folded.header), int(folded.seen)
    return new
