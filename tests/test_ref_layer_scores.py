"""Which residual blocks layer pruning removes, against |γ| values typed in (issue 28, tests
whose reference is the code under test). test_prune_layers checks that the removed blocks are
those with the n smallest of the pruner's own `scores`, so a score of the wrong conv (conv1
instead of conv2), of signed γ, or max for mean chose other blocks and passed.

Documented (prune/layers.py): a block is ranked by the mean (--rank mean) or max (--rank max)
|γ| of conv2, the conv just before its [shortcut]; the n smallest go, ties to the earlier block.
"""
from __future__ import annotations

import pytest
import torch

from cfgs import conv_section, shortcut_section, tiny_detector_cfg
from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.prune.layer_run import prune_layers_model
from yolo_slim.prune.layers import analyze_blocks

# layer 0 conv; block A = convs 1, 2 + shortcut 3; block B = convs 4, 5 + shortcut 6; conv 7
# absorbs the offsets; then the head
BLOCK = conv_section(4, 1, 1) + conv_section(4, 3, 1) + shortcut_section(-3)
NET = tiny_detector_cfg(conv_section(4, 3, 1), BLOCK, BLOCK, conv_section(4, 3, 1), size=32)

# conv2 of A: mean |γ| = (0.1 + 0.9 + 0.2 + 0.2) / 4 = 0.35, max 0.9 (signed: mean -0.1, max 0.2)
# conv2 of B: 0.5 everywhere. conv1s are ranked the other way round (A 1.0, B 0.01)
GAMMA = {1: [1.0] * 4, 2: [0.1, -0.9, 0.2, 0.2], 4: [0.01] * 4, 5: [0.5] * 4}


def net(gamma: dict[int, list[float]]) -> Darknet:
    torch.manual_seed(0)
    m = Darknet(parse_cfg_text(NET))
    with torch.no_grad():
        for i, g in gamma.items():
            m.module_list[i].bn.weight.copy_(torch.tensor(g))
    return m


def test_the_net_has_the_two_blocks():
    blocks, why = analyze_blocks(parse_cfg_text(NET))
    assert [(b.conv1, b.conv2, b.shortcut, b.source) for b in blocks] == [(1, 2, 3, 0), (4, 5, 6, 3)]
    assert why == {}


@pytest.mark.parametrize("rank, scores, first", [
    ("mean", {3: 0.35, 6: 0.5}, 3),  # A's conv2 has the smaller mean |γ|: A goes first
    ("max", {3: 0.9, 6: 0.5}, 6),  # ... and the larger max |γ|: B goes first
])
def test_blocks_ranked_by_conv2_abs_gamma(rank, scores, first):
    r = prune_layers_model(net(GAMMA), 1, rank=rank, img_size=(32, 32), check=False)
    assert r.scores == pytest.approx(scores, rel=1e-6)
    assert [b.shortcut for b in r.removed] == [first]
    assert [b["score"] for b in r.report["removed_blocks"]] == pytest.approx([scores[first]], rel=1e-6)
    both = prune_layers_model(net(GAMMA), 2, rank=rank, img_size=(32, 32), check=False)
    assert [b.shortcut for b in both.removed] == [3, 6]  # listed in layer order


def test_a_tie_removes_the_earlier_block():
    tied = {**GAMMA, 2: [0.5] * 4}
    for rank in ("mean", "max"):
        r = prune_layers_model(net(tied), 1, rank=rank, img_size=(32, 32), check=False)
        assert r.scores == pytest.approx({3: 0.5, 6: 0.5}) and [b.shortcut for b in r.removed] == [3]
