"""YOLO loss: GIoU values, target assignment, a perfect prediction beats shifted ones, finite
gradients under huge logits and fp16, class logits trained for one class, and the documented
normalisation (duplicating the batch leaves the loss unchanged)."""
from __future__ import annotations

import math

import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.train.loss import LossHyp, bbox_giou, build_targets, yolo_loss
from yolo_slim.nn.model import Darknet

from cfgs import conv_section, head_sections, net_section, route_section

ANCHORS_4 = ((6, 6), (12, 12), (24, 24), (40, 40))


def two_heads_cfg(nc: int) -> str:
    """Two heads of 2 anchors each: stride 4 (anchors 6, 12) and, routed back, stride 8 (24, 40)."""
    return "".join([net_section(), conv_section(8, 3, 2), conv_section(8, 3, 2),
                    head_sections(nc, ANCHORS_4, mask=[0, 1]), route_section(-3),
                    conv_section(8, 3, 2), head_sections(nc, ANCHORS_4, mask=[2, 3])])


def model(nc: int = 3) -> Darknet:
    torch.manual_seed(0)
    return Darknet(parse_cfg_text(two_heads_cfg(nc)))


TARGETS = torch.tensor([[0, 0, 0.30, 0.40, 0.20, 0.15],   # 12.8 x 9.6 px -> small anchors
                        [0, 2, 0.70, 0.60, 0.55, 0.60],   # 35 x 38 px -> large anchors
                        [1, 1, 0.52, 0.47, 0.09, 0.12]])  # 5.8 x 7.7 px


def raw_shapes(m: Darknet, bs: int = 2) -> list[torch.Tensor]:
    with torch.no_grad():
        return [torch.zeros_like(r) for r in m.forward_raw(torch.zeros(bs, 3, 64, 64))]


def perfect_raw(m: Darknet, targets: torch.Tensor, dx: float = 0.0, wrong_cls: bool = False):
    """Head maps whose decoded boxes equal the targets at every assigned anchor (confident
    objectness and class), everything else confidently empty."""
    raw = [r - 12.0 for r in raw_shapes(m)]
    for r, (b, a, gj, gi, tbox, anc, tcls) in zip(raw, build_targets(raw, targets, m.heads, (64, 64), 4.0)):
        xy = (tbox[:, :2] + torch.tensor([dx, 0.0])).clamp(0.01, 0.99)
        r[b, a, gj, gi, 0:2] = torch.log(xy / (1 - xy))
        r[b, a, gj, gi, 2:4] = torch.log(tbox[:, 2:] / anc)
        r[b, a, gj, gi, 4] = 12.0
        r[b, a, gj, gi, 5 + ((tcls + 1) % m.num_classes if wrong_cls else tcls)] = 12.0
    return raw


def test_giou_known_values():
    a = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0]])
    b = torch.tensor([[0.5, 0.5, 1.0, 1.0], [2.5, 0.5, 1.0, 1.0], [1.5, 1.0, 2.0, 2.0]])
    # identical: 1; disjoint unit squares 1 apart: iou 0, hull 3, union 2 -> -1/3;
    # 2x2 squares shifted by 0.5: overlap 3, union 5, hull == union -> 0.6
    torch.testing.assert_close(bbox_giou(a, b), torch.tensor([1.0, -1 / 3, 0.6]), atol=1e-5, rtol=0)


def test_assignment_uses_anchor_ratio_and_best_anchor():
    m = model()
    out = build_targets(raw_shapes(m), TARGETS, m.heads, (64, 64), 4.0)
    # head 0 (stride 4, anchors 6, 12), head 1 (stride 8, anchors 24, 40)
    per_head = [sorted(zip(b.tolist(), a.tolist(), tc.tolist())) for b, a, _, _, _, _, tc in out]
    # target 0 (12.8x9.6 px) fits anchors 6, 12, 24 (40/9.6 > 4); target 2 (35x38) fits 12,
    # 24, 40; target 1 (5.8x7.7) fits 6 and 12 (24/5.8 > 4)
    assert per_head[0] == [(0, 0, 0), (0, 1, 0), (0, 1, 2), (1, 0, 1), (1, 1, 1)]
    assert per_head[1] == [(0, 0, 0), (0, 0, 2), (0, 1, 2)]
    # cells hold the centre: target 1 at (0.70, 0.60) on the 8x8 map -> (gi, gj) = (5, 4)
    b, a, gj, gi, tbox, anc, tc = out[1]
    k = (tc == 2).nonzero()[0, 0]
    assert (gi[k].item(), gj[k].item()) == (5, 4)
    torch.testing.assert_close(tbox[k], torch.tensor([0.6, 0.8, 4.4, 4.8]), atol=1e-5, rtol=0)
    # nothing matches within anchor_t=1.01 -> each target still gets its best anchor
    out = build_targets(raw_shapes(m), TARGETS, m.heads, (64, 64), 1.01)
    assert sum(len(o[0]) for o in out) == 3


def test_perfect_prediction_beats_shifted_and_wrong_class():
    m = model()
    hyp = LossHyp()
    perfect, items = yolo_loss(perfect_raw(m, TARGETS), TARGETS, m, (64, 64), hyp)
    assert perfect.item() < 0.01 and items[0].item() < 1e-4  # box term ~ 0 (GIoU = 1)
    shifted, items_s = yolo_loss(perfect_raw(m, TARGETS, dx=0.3), TARGETS, m, (64, 64), hyp)
    wrong, items_w = yolo_loss(perfect_raw(m, TARGETS, wrong_cls=True), TARGETS, m, (64, 64), hyp)
    assert shifted.item() > perfect.item() + 0.3 and items_s[0] > 0.3
    assert items_w[2].item() > 1.0 and wrong.item() > perfect.item() + 1.0


def test_gradients_finite_for_huge_logits_and_fp16():
    m = model()
    raw = [torch.full_like(r, 80.0) for r in raw_shapes(m)]  # exp(80) overflows fp32 unclamped
    raw = [r.half().requires_grad_() for r in raw]
    loss, items = yolo_loss(raw, TARGETS, m, (64, 64))
    loss.backward()
    assert torch.isfinite(items).all()
    assert all(torch.isfinite(r.grad).all() for r in raw)


def test_empty_targets_only_objectness():
    m = model()
    raw = raw_shapes(m)
    loss, items = yolo_loss(raw, torch.zeros(0, 6), m, (64, 64))
    # all logits 0: BCE = log 2 per cell; obj gain = 64 * (64*64/640^2) * 3/2 layers
    expect = math.log(2) * 64 * (64 * 64 / 640 ** 2) * 3 / 2 * 2
    assert items[0] == 0 and items[2] == 0 and abs(items[1].item() - expect) < 1e-4


def test_one_class_model_trains_its_class_logit():
    m = model(nc=1)
    raw = [r.requires_grad_() for r in raw_shapes(m)]
    t = TARGETS.clone()
    t[:, 1] = 0
    loss, items = yolo_loss(raw, t, m, (64, 64))
    loss.backward()
    assert items[2] > 0  # class BCE on positives: logit 0 vs target 1
    assert sum(r.grad[..., 5].abs().sum() for r in raw) > 0


def test_loss_is_a_per_image_mean():
    """Duplicating every image and its targets leaves the loss unchanged: gradients of one
    optimizer step do not scale with the batch (see loss.py's normalisation note)."""
    m = model()
    torch.manual_seed(1)
    raw = [torch.randn_like(r) for r in raw_shapes(m)]
    loss1, _ = yolo_loss(raw, TARGETS, m, (64, 64))
    raw2 = [torch.cat([r, r]) for r in raw]
    t2 = torch.cat([TARGETS, TARGETS + torch.tensor([2.0, 0, 0, 0, 0, 0])])
    loss2, _ = yolo_loss(raw2, t2, m, (64, 64))
    assert loss1.item() == pytest.approx(loss2.item(), rel=1e-5)
