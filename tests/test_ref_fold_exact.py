"""Exact folding of a *live* β through [reorg3d] and [sam] into 1×1 convs (issue 28).

A cut channel with γ = 0 and β ≠ 0 outputs the constant act(β). Where every consumer is a 1×1
conv there is no zero padding, so folding that constant into the consumers must be exact: the
compact model equals the unpruned model (whose γ is already 0) at every pixel. The existing
exact-fold tests use dead channels (γ = β = 0, constant 0), which pass even if nothing is
carried through these sections. The reference here is the unpruned model itself.
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

from cfgs import conv_section, head_sections, net_section
from netgen import randomize_bn

def net(sam_act: str = "linear", act3: str = "logistic") -> str:
    return (net_section(64)
            + conv_section(8, 3, 2)                        # 0: 32x32x8, channel 2 cut (β 2)
            + "[reorg3d]\nstride=2\n"                       # 1: 16x16x32, channel 2 in 4 copies
            + conv_section(8, 1)                            # 2: 1x1 reads the reorg; channel 5 cut
            + conv_section(8, 1, act=act3)                  # 3: 1x1; channel 5 cut (tied by the sam)
            + f"[sam]\nfrom=-2\nactivation={sam_act}\n"    # 4: 3 ⊙ 2: channel 5 = act(a·b)
            + conv_section(8, 1)                            # 5: 1x1 reads the sam
            + head_sections(1, ((8, 8),)))                  # 6, 7


# the default: channel 5 of the sam is leaky(1.5)·σ(-1); LEAKY_SAM: leaky(leaky(1.5)·(-1)) =
# -0.15, where a constant that skipped the sam's activation would be -1.5
LEAKY_SAM = dict(sam_act="leaky", act3="linear")
CUTS = {0: [2], 2: [5], 3: [5]}
BETA = {0: {2: 2.0}, 2: {5: 1.5}, 3: {5: -1.0}}


def live_beta_model(seed: int = 0, **kw) -> Darknet:
    """Random BN; the cut channels have γ = 0 and a nonzero β (what L1 training leaves)."""
    torch.manual_seed(seed)
    m = Darknet(parse_cfg_text(net(**kw), "reorg_sam.cfg")).eval()
    randomize_bn(m, seed)
    with torch.no_grad():
        for i, chans in BETA.items():
            for c, b in chans.items():
                m.module_list[i].bn.weight[c] = 0
                m.module_list[i].bn.bias[c] = b
    return m


def cut(m: Darknet):
    g = build_graph(m.module_defs)
    roots = {int(g.root[g.conv_nodes[i][c]]) for i, cs in CUTS.items() for c in cs}
    keep = ~np.isin(g.root, list(roots))
    cuts = channel_cuts(g, keep)
    assert {i: np.flatnonzero(c).tolist() for i, c in cuts.items()} == CUTS  # the sam ties 2 and 3
    folded, compact = apply_cut(m, cuts, lambda f: compact_model(f, g, keep))
    return folded, compact, cuts


def raw(m: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return m.eval().forward_raw(x)


def max_abs(a, b) -> float:
    return max(float((p.double() - q.double()).abs().max()) for p, q in zip(a, b))


X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kw", [{}, LEAKY_SAM])
def test_live_beta_matters_here(kw):
    """The constants are not negligible: dropping any one of them (β = 0 too) moves the
    outputs by far more than the 1e-5 the fold must meet."""
    m = live_beta_model(**kw)
    for i, chans in BETA.items():
        dead = copy.deepcopy(m)
        with torch.no_grad():
            for c in chans:
                dead.module_list[i].bn.bias[c] = 0
        assert max_abs(raw(m, X), raw(dead, X)) > 0.01, i


@pytest.mark.parametrize("kw", [{}, LEAKY_SAM])
def test_compact_equals_unpruned_model_through_reorg3d_and_sam(kw):
    m = live_beta_model(**kw)
    folded, compact, cuts = cut(m)
    assert compact.module_list[0].conv.out_channels == 7
    assert compact.module_list[2].conv.in_channels == 28  # 4 copies of channel 2 gone
    assert compact.module_list[2].conv.out_channels == compact.module_list[3].conv.out_channels == 7
    assert compact.module_list[5].conv.in_channels == 7
    ref = raw(m, X)
    assert max_abs(raw(compact, X), ref) <= 1e-5  # every pixel, borders included
    assert max_abs(raw(folded, X), ref) <= 1e-5
    rep = verify(m, folded, compact, cuts, img_hw=(64, 64))
    assert rep["max_abs_vs_masked_unfolded"] <= 1e-5 and rep["max_abs_vs_folded"] <= 1e-5


def test_each_section_alone():
    """Only the reorg3d cut, then only the sam cut: each is exact on its own."""
    for only in ({0: [2]}, {2: [5], 3: [5]}):
        m = live_beta_model(1)
        g = build_graph(m.module_defs)
        roots = {int(g.root[g.conv_nodes[i][c]]) for i, cs in only.items() for c in cs}
        keep = ~np.isin(g.root, list(roots))
        folded, compact = apply_cut(m, channel_cuts(g, keep), lambda f: compact_model(f, g, keep))
        assert max_abs(raw(compact, X), raw(m, X)) <= 1e-5, only


def test_pruner_threshold_cut_is_exact():
    """The user's path: --threshold just above 0 cuts exactly the γ = 0 channels."""
    m = live_beta_model(2)
    res = prune_model(m, PruneOptions(threshold=1e-6, img_size=(64, 64)))
    assert res.report["channels"]["after"] == {0: 7, 2: 7, 3: 7, 5: 8, 6: 6}
    assert max_abs(raw(res.compact, X), raw(m, X)) <= 1e-5
    assert res.report["verification"]["max_abs_vs_masked_unfolded"] <= 1e-5
