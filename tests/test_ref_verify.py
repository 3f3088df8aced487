"""Verification against references that do not come from the constant propagation it checks
(issue 28, "tests whose reference is the code under test").

`verify` (prune/verify.py) builds its *masked* model with the same `propagate` that folds, so a
bug that made the border gap 0 (or that masked the wrong thing) would agree with itself. Here
the masked model is built by hand (γ of the cut channels zeroed in a copy, nothing else) and
the border gap of a padded 3×3 consumer is computed from its kernel alone:
Δ = act(β) · Σ W over the taps that fall into the zero padding.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from yolo_slim.analysis.graph import build_graph
from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.prune.channels import PruneOptions, prune_model
from yolo_slim.prune.compact import compact_model
from yolo_slim.prune.fold import channel_cuts
from yolo_slim.prune.verify import apply_cut, verify

from cfgs import conv_section, net_section, yolo_section
from netgen import random_model

# conv 0: 3 -> 4 channels, 3x3 stride 2 (64 -> 32 px), BN, leaky; conv 1 is the head conv
# itself: 3x3, zero padding 1, no BN, linear, 6 = 1 anchor x (5 + 1 class) filters
GAP_NET = (net_section(64) + conv_section(4, 3, 2) + conv_section(6, 3, 1, bn=False, act="linear")
           + yolo_section([0], ((8, 8),), 1, 1))
CUT, BETA, GAMMA = 1, 0.75, 0.3  # conv 0's channel 1: a small but nonzero γ, β > 0


def gap_model() -> Darknet:
    torch.manual_seed(0)
    m = Darknet(parse_cfg_text(GAP_NET)).eval()
    with torch.no_grad():
        bn = m.module_list[0].bn
        bn.weight.copy_(torch.tensor([1.1, GAMMA, -0.9, 0.8]))
        bn.bias.copy_(torch.tensor([0.2, BETA, -0.3, 0.1]))
        bn.running_mean.copy_(torch.tensor([0.05, -0.1, 0.2, 0.0]))
        bn.running_var.copy_(torch.tensor([1.2, 0.7, 0.9, 1.5]))
    return m


def cut_channel(m: Darknet, layer: int, channels: list[int]):
    """The pruner's own pipeline for an explicit cut: (folded, compact, cuts)."""
    g = build_graph(m.module_defs)
    keep = np.ones(len(g.root), bool)
    keep[g.conv_nodes[layer][channels]] = False
    cuts = channel_cuts(g, keep)
    folded, compact = apply_cut(m, cuts, lambda f: compact_model(f, g, keep))
    return folded, compact, cuts


def hand_masked(m: Darknet, cuts: dict[int, np.ndarray]) -> Darknet:
    """The masked model from its definition: γ of every cut channel zeroed, nothing else."""
    masked = copy.deepcopy(m).eval()
    with torch.no_grad():
        for i, cut in cuts.items():
            masked.module_list[i].bn.weight[torch.from_numpy(cut)] = 0
    return masked


def verify_input(hw, seed: int = 0) -> torch.Tensor:
    """The input verify() documents: one seeded torch.rand image."""
    return torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(seed))


def max_abs(a, b) -> float:
    return max(float((p.double() - q.double()).abs().max()) for p, q in zip(a, b))


def test_border_gap_is_the_padding_taps_times_the_constant():
    """One cut channel (β = 0.75, leaky: constant 0.75) feeding a padded 3x3 conv: at the border
    the masked model reads 0 from the padding where the folded one added 0.75·W. The gap at
    output o and a pixel is 0.75·Σ W[o, cut] over the taps outside the map; its max over every
    border class (4 edges, 4 corners) is what verify must report, not 0."""
    m = gap_model()
    folded, compact, cuts = cut_channel(m, 0, [CUT])
    assert compact.module_list[0].conv.out_channels == 3
    rep = verify(m, folded, compact, cuts, img_hw=(64, 64))
    # by hand, from the head conv's kernel alone
    w = m.module_list[1].conv.weight.detach().double()[:, CUT]  # [6, 3, 3]
    const = BETA  # leaky(0.75) = 0.75
    outside = {0: [0], 1: [], 2: [2]}  # per row class (top, interior, bottom): taps in the padding
    gaps = []
    for ry in (0, 1, 2):
        for rx in (0, 1, 2):
            mask = torch.zeros(3, 3, dtype=torch.float64)
            for ky in outside[ry]:
                mask[ky, :] = 1
            for kx in outside[rx]:
                mask[:, kx] = 1
            gaps.append((const * (w * mask).sum((1, 2))).abs().max().item())
    expect = max(gaps)
    assert expect > 0.05  # provably nonzero: the kernel is not zero on the border taps
    assert rep["max_abs_vs_masked_unfolded"] == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert rep["max_abs_vs_folded"] <= 1e-5
    # ... and the hand-masked model (γ zeroed in a copy) shows the same gap
    x = verify_input((64, 64))
    with torch.no_grad():
        mine = max_abs(compact.forward_raw(x), hand_masked(m, cuts).forward_raw(x))
    assert mine == pytest.approx(expect, rel=1e-5, abs=1e-6)
    # the interior is exact: the gap lives on the border ring only
    with torch.no_grad():
        d = (compact.forward_raw(x)[0] - hand_masked(m, cuts).forward_raw(x)[0]).abs()
    assert float(d[:, :, 1:-1, 1:-1].max()) <= 1e-5


def test_a_dead_channel_has_no_gap():
    """γ = β = 0: act(0) = 0 on the border too, so the gap is float rounding (issue 13)."""
    m = gap_model()
    with torch.no_grad():
        m.module_list[0].bn.weight[CUT] = 0
        m.module_list[0].bn.bias[CUT] = 0
    folded, compact, cuts = cut_channel(m, 0, [CUT])
    rep = verify(m, folded, compact, cuts, img_hw=(64, 64))
    assert rep["max_abs_vs_masked_unfolded"] <= 1e-5
    x = verify_input((64, 64))
    with torch.no_grad():
        assert max_abs(compact.forward_raw(x), m.forward_raw(x)) <= 1e-5


def test_reported_gap_equals_hand_masked_model_on_a_pruned_net():
    """A real percent cut of a residual net with random BN (nonzero γ, β on the cut channels):
    verify's max_abs_vs_masked_unfolded is the max |Δ| between the compact model and a copy of
    the full model with the cut channels' γ zeroed, computed here; vs_folded is rounding."""
    text = (net_section(64) + conv_section(8, 3, 2) + conv_section(16, 3, 2) + conv_section(8, 1)
            + conv_section(16, 3) + "[shortcut]\nfrom=-3\nactivation=linear\n" + conv_section(16, 3, 2)
            + conv_section(18, 1, bn=False, act="linear")
            + yolo_section([0, 1, 2], ((8, 8), (16, 16), (32, 32)), 1, 3))
    m = random_model(11, text)
    res = prune_model(m, PruneOptions(global_percent=0.4, img_size=(64, 64)))
    v = res.report["verification"]
    g = res.graph
    cuts = {i: ~res.keep_node[n] for i, n in g.conv_nodes.items() if not res.keep_node[n].all()}
    assert sum(int(c.sum()) for c in cuts.values()) >= 5
    # the cut channels really carry a live β and γ (so the masked model is not the full one)
    with torch.no_grad():
        for i, c in cuts.items():
            bn = m.module_list[i].bn
            assert float(bn.weight[torch.from_numpy(c)].abs().min()) > 0
        assert max(float(m.module_list[i].bn.bias[torch.from_numpy(c)].abs().max())
                   for i, c in cuts.items()) > 0.1
    x = verify_input(tuple(v["img_size"]))
    with torch.no_grad():
        out = res.compact.forward_raw(x)
        mine = max_abs(out, hand_masked(m, cuts).forward_raw(x))
        vs_folded = max_abs(out, res.folded.forward_raw(x))
        vs_full = max_abs(out, m.forward_raw(x))
    assert mine > 1e-3  # β of cut channels reaches padded 3x3 convs: a real gap
    assert v["max_abs_vs_masked_unfolded"] == pytest.approx(mine, rel=1e-4, abs=1e-6)
    assert v["max_abs_vs_folded"] == pytest.approx(vs_folded, rel=1e-3, abs=1e-6)
    assert vs_folded <= 1e-5 * v["max_abs_output"] + 1e-6
    assert vs_full > mine  # zeroing γ is what the masked model does; the full model differs more
