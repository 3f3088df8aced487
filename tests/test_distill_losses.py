"""Distillation losses on hand-made tensors."""
import math

import pytest
import torch

from yolo_slim.train.distill import binary_kl_with_logits, bounded_box_loss, hinton_loss


def test_binary_kl_matches_the_closed_form_and_is_zero_at_equality():
    s, t, T = torch.tensor([0.3, -2.0, 4.0]), torch.tensor([1.0, -1.0, 4.0]), 2.0
    pt, ps = torch.sigmoid(t / T), torch.sigmoid(s / T)
    ref = (pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))) * T * T
    got = binary_kl_with_logits(s, t, T)
    assert torch.allclose(got, ref, atol=1e-6)
    assert got[2].item() == 0.0
    # a softmax over [obj, cls] would not be zero here: the binary form treats them separately
    assert binary_kl_with_logits(torch.tensor([5.0, 5.0]), torch.tensor([5.0, 5.0]), 1.0).sum() == 0


def test_hinton_loss_zero_for_equal_positive_otherwise_and_ignores_boxes():
    torch.manual_seed(0)
    s = [torch.randn(2, 3, 4, 4, 8), torch.randn(2, 3, 8, 8, 8)]
    assert hinton_loss(s, [x.clone() for x in s]).item() == 0.0
    t = [x.clone() for x in s]
    t[0][..., :4] += 3.0  # box channels are not part of the KL
    assert hinton_loss(s, t).item() == 0.0
    t[1][..., 5] += 1.0
    assert hinton_loss(s, t).item() > 1e-3


def test_bounded_box_loss_is_zero_where_student_beats_teacher():
    y = torch.zeros(3, 4)
    st = torch.tensor([[1.0, 0, 0, 0], [0.1, 0, 0, 0], [2.0, 0, 0, 0]])
    te = torch.tensor([[0.5, 0, 0, 0], [0.5, 0, 0, 0], [2.0, 0, 0, 0]])
    loss, frac = bounded_box_loss(st, te, y, margin=0.0)
    # anchor 0: 1.0 > 0.25 -> 1.0 ; anchor 1: 0.01 < 0.25 -> 0 ; anchor 2: 4 + 0 > 4 is False -> 0
    assert loss.item() == pytest.approx(1.0 / 3)
    assert frac.item() == pytest.approx(1 / 3)
    loss, frac = bounded_box_loss(st, te, y, margin=0.1)  # anchor 2 becomes active: 4.1 > 4
    assert loss.item() == pytest.approx(5.0 / 3) and frac.item() == pytest.approx(2 / 3)


def test_gradients_reach_only_the_student():
    s = torch.randn(4, 4, requires_grad=True)
    t = torch.randn(4, 4, requires_grad=True)
    loss, _ = bounded_box_loss(s, t, torch.zeros(4, 4), margin=100.0)
    (loss + binary_kl_with_logits(s, t, 2.0).mean()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_hinton_loss_weighs_objectness_and_classes_by_their_gains():
    """Per head: g_obj x mean objectness KL + g_cls x mean class KL, summed over heads (the
    closed form of the binary KL, written out here independently)."""
    def kl(s: float, t: float, T: float) -> float:
        pt, ps = 1 / (1 + math.exp(-t / T)), 1 / (1 + math.exp(-s / T))
        return (pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))) * T * T
    s = [torch.zeros(1, 3, 2, 2, 8), torch.zeros(1, 3, 4, 4, 8)]  # 3 classes
    t = [x.clone() for x in s]
    t[0][0, 1, 0, 1, 4] = 2.0    # one objectness logit on head 0 (12 cells)
    t[1][0, 2, 3, 0, 6] = -1.5   # one class logit on head 1 (48 cells x 3 classes)
    t[1][..., :4] = 9.0          # boxes are not part of the KL
    T = 2.0
    got = hinton_loss(s, t, T, g_obj=0.7, g_cls=3.0).item()
    assert got == pytest.approx(0.7 * kl(0, 2.0, T) / 12 + 3.0 * kl(0, -1.5, T) / (48 * 3), rel=1e-6)
    assert hinton_loss(s, t, T).item() == pytest.approx(kl(0, 2.0, T) / 12 + kl(0, -1.5, T) / 144,
                                                        rel=1e-6)
