"""The YOLO loss (train/loss.py) against numbers computed here from its documented formula
(issue 28): two heads with different cell counts, different logits, and x/y strides that
differ, so a per-head mean instead of the per-cell mean, or a swapped x/y gain, shows.

Documented (loss.py): gains box 3.2, obj 64, cls 32, scaled by 3/nl (box), by H·W/640²·3/nl
(obj) and by nc/80·3/nl (cls); box and class terms are means over the assigned targets,
objectness a mean over the grid cells of all heads together (every cell weighs the same),
times nl; BCE with logits: BCE(l, t) = softplus(l) − t·l; the objectness target of an assigned
cell is its GIoU (iou_obj = 1), in grid units.
"""
from __future__ import annotations

import math

import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.train.loss import LossHyp, build_targets, yolo_loss

H, W = 64, 96
# 0: 3x3 stride 2 (48 x 32), 1: stride_x 2 stride_y 1 (24 x 32: x stride 4, y stride 2),
# 2/3: head 0 (anchors 10x14, 23x27), 4: route to 1, 5: stride 2 (12 x 16: x 8, y 4),
# 6/7: head 1 (anchor 37x58); 2 classes
CFG = f"""[net]
width={W}
height={H}
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=3
stride_x=2
stride_y=1
pad=1
activation=leaky
[convolutional]
filters=14
size=1
activation=linear
[yolo]
mask=0,1
anchors=10,14, 23,27, 37,58
classes=2
num=3
[route]
layers=1
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=7
size=1
activation=linear
[yolo]
mask=2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""
B = 2
CELLS = (B * 2 * 32 * 24, B * 1 * 16 * 12)  # 3072 and 384
L0, L1 = 1.5, -2.0  # every raw value of head 0 / head 1


def sp(v: float) -> float:
    return math.log1p(math.exp(v))


def model() -> Darknet:
    torch.manual_seed(0)
    return Darknet(parse_cfg_text(CFG, "loss.cfg"))


def raw_maps() -> list[torch.Tensor]:
    return [torch.full((B, 2, 32, 24, 7), L0), torch.full((B, 1, 16, 12, 7), L1)]


def test_objectness_is_one_mean_over_every_cell_of_both_heads():
    m = model()
    _, items = yolo_loss(raw_maps(), torch.zeros(0, 6), m, (H, W))
    g_obj = 64 * (H * W) / 640 ** 2 * 3 / 2
    expect = g_obj * 2 * (CELLS[0] * sp(L0) + CELLS[1] * sp(L1)) / (CELLS[0] + CELLS[1])
    assert items[1].item() == pytest.approx(expect, rel=1e-5)
    assert items[0].item() == 0 and items[2].item() == 0
    # a per-head mean would give g_obj · (sp(L0) + sp(L1)): different by > 40 % here
    assert abs(g_obj * (sp(L0) + sp(L1)) - expect) > 0.4 * expect


def test_target_assignment_with_different_x_and_y_strides():
    """A 23x27 px box centred at (0.3, 0.4) of a 96x64 image, on head 0's 24x32 map (cells 4 px
    wide, 2 px high): cell (gi, gj) = (int(7.2), int(12.8)) = (7, 12), offset (0.2, 0.8), size
    in cells (23/4, 27/2) = (5.75, 13.5); the anchor 23x27 in cells is the same. anchor_t 1.5:
    only that anchor matches (10x14: ratio 2.3; 37x58: 2.15)."""
    m = model()
    t = torch.tensor([[0, 0, 0.3, 0.4, 23 / W, 27 / H]])
    out = build_targets(raw_maps(), t, m.heads, (H, W), 1.5)
    b, a, gj, gi, tbox, anc, tcls = out[0]
    assert (b.tolist(), a.tolist(), gj.tolist(), gi.tolist(), tcls.tolist()) == ([0], [1], [12], [7], [0])
    torch.testing.assert_close(tbox, torch.tensor([[0.2, 0.8, 5.75, 13.5]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(anc, torch.tensor([[5.75, 13.5]]), atol=1e-5, rtol=0)
    assert len(out[1][0]) == 0
    # head 1 (12x16 cells of 8x4 px): the 37x58 anchor is (4.625, 14.5) cells; a box of that
    # size at (0.55, 0.9) sits in cell (int(6.6), int(14.4)) = (6, 14)
    t1 = torch.tensor([[1, 1, 0.55, 0.9, 37 / W, 58 / H]])
    b, a, gj, gi, tbox, anc, tcls = build_targets(raw_maps(), t1, m.heads, (H, W), 1.2)[1]
    assert (b.tolist(), a.tolist(), gj.tolist(), gi.tolist(), tcls.tolist()) == ([1], [0], [14], [6], [1])
    torch.testing.assert_close(tbox, torch.tensor([[0.6, 0.4, 4.625, 14.5]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(anc, torch.tensor([[4.625, 14.5]]), atol=1e-5, rtol=0)


def test_full_loss_by_hand_for_one_target():
    """One target (above) assigned to head 0, anchor 1, cell (7, 12). Its raw values: tx = ty =
    tw = th = 0 -> predicted box centre (0.5, 0.5), size = the anchor (5.75, 13.5) cells; the
    target is centred at (0.2, 0.8) with the same size. objectness logit 0.7, class logits
    0.4, -0.3 (target class 0)."""
    m = model()
    raw = raw_maps()
    raw[0][0, 1, 12, 7] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.7, 0.4, -0.3])
    t = torch.tensor([[0, 0, 0.3, 0.4, 23 / W, 27 / H]])
    loss, items = yolo_loss(raw, t, m, (H, W), LossHyp(anchor_t=1.5))
    # GIoU by hand, grid units: boxes 5.75 x 13.5, centres 0.3 apart in x, 0.3 in y
    bw, bh = 5.75, 13.5
    inter = (bw - 0.3) * (bh - 0.3)
    union = 2 * bw * bh - inter
    hull = (bw + 0.3) * (bh + 0.3)
    giou = inter / union - (hull - union) / hull
    assert 0.8 < giou < 0.95
    g_box, g_obj, g_cls = 3.2 * 3 / 2, 64 * (H * W) / 640 ** 2 * 3 / 2, 32 * 2 / 80 * 3 / 2
    lbox = g_box * (1 - giou)
    obj_sum = (CELLS[0] - 1) * sp(L0) + (sp(0.7) - giou * 0.7) + CELLS[1] * sp(L1)
    lobj = g_obj * 2 * obj_sum / (CELLS[0] + CELLS[1])
    lcls = g_cls * (sp(-0.4) + sp(-0.3)) / 2  # BCE(0.4, 1) and BCE(-0.3, 0)
    torch.testing.assert_close(items, torch.tensor([lbox, lobj, lcls, lbox + lobj + lcls]),
                               rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(lbox + lobj + lcls, rel=1e-5)
