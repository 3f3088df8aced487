"""Latency sparsity weights (--sparsity-weight latency): what removing one channel class saves on
the measured latency table (analysis/latency.py)."""
from __future__ import annotations

import numpy as np

from yolo_slim.analysis.graph import ChannelGraph
from yolo_slim.analysis.latency import LatencyTable


def class_latency_saving(table: LatencyTable, g: ChannelGraph, cls_of_root: np.ndarray,
                         n: int) -> np.ndarray:
    """Per penalised class (`cls_of_root`: class root -> class id, -1 not penalised): the
    predicted latency removing that one class saves at full widths — its rows in the producing
    convs and its input slices in every consumer (the same bookkeeping as the FLOPs weight,
    with measured marginal costs: a unit step down each axis of the table)."""
    keys = table.bind(g.defs)
    saving = np.zeros(n)
    for i, k in keys.items():
        s = table.entries[k]["spec"]
        ci, co = s["cin"], s["cout"]
        base = table.conv_ms(k, ci, co)
        step = int(table.meta.get("align", 8))  # a block of channels: the unit the runtime sees
        d_in = (base - table.conv_ms(k, max(1, ci - step), co)) / min(step, ci - 1 or 1)
        d_out = (base - table.conv_ms(k, ci, max(1, co - step))) / min(step, co - 1 or 1)
        cin, cout = cls_of_root[g.root[g.in_nodes(i)]], cls_of_root[g.root[g.conv_nodes[i]]]
        saving += max(d_in, 0.0) * np.bincount(cin[cin >= 0], minlength=n)
        saving += max(d_out, 0.0) * np.bincount(cout[cout >= 0], minlength=n)
    return saving * table.calib["scale"]
