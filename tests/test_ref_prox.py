"""The proximal group step (train/prox.py) against hand-computed numbers (issue 28).

The older prox tests take their expected norms from `ChannelClasses.norms()` itself, so a norm of
γ alone instead of (γ, β) passed. Here every (γ, β) is set by hand on a net whose shortcut ties
conv 0 and conv 2 channel by channel (a class = two member channels in two convs), and the
expected ‖(γ, β)‖ over the members and the post-prox values (γ, β)·max(0, 1 − τ/‖·‖) are
written out as numbers.
"""
from __future__ import annotations

import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.train.prox import ChannelClasses

from cfgs import conv_section, head_sections, net_section, shortcut_section

# 0: 3x3 -> 4, 1: 1x1 -> 2, 2: 3x3 -> 4, 3: shortcut 2 + 0 (ties conv 0 and conv 2 channel c),
# 4/5: the head (1x1 conv without BN, [yolo] of 1 anchor and 1 class)
NET = (net_section(32) + conv_section(4, 3) + conv_section(2, 1) + conv_section(4, 3)
       + shortcut_section(-3) + head_sections(1, ((8, 8),)))

# (γ, β) per channel, chosen so every norm is a round number
PAIRS = {
    0: [(1.0, 2.0), (0.0, 3.0), (0.6, 0.0), (3.0, 0.0)],
    2: [(2.0, 4.0), (0.0, 4.0), (0.0, 0.8), (4.0, 0.0)],
    1: [(6.0, 8.0), (0.5, -1.2)],
}
# class (layer 0 channel c + layer 2 channel c) and the single-member classes of conv 1:
#   c=0: √(1+4+4+16) = 5      (γ alone: √5)
#   c=1: √(9+16) = 5          (γ alone: 0 -- would look dead)
#   c=2: √(0.36+0.64) = 1     (γ alone: 0.6)
#   c=3: √(9+16) = 5          (γ alone: 5)
#   conv 1 ch 0: √(36+64) = 10, ch 1: √(0.25+1.44) = 1.3
NORMS = {(0, 0): 5.0, (0, 1): 5.0, (0, 2): 1.0, (0, 3): 5.0, (1, 0): 10.0, (1, 1): 1.3}
TAU = {(0, 0): 2.5, (0, 1): 1.0, (0, 2): 1.2, (0, 3): 5.0, (1, 0): 4.0, (1, 1): 0.0}
# max(0, 1 - τ/‖·‖): 0.5, 0.8, 0 (1.2 > 1), 0 (τ = ‖·‖), 0.6, 1
AFTER = {
    0: [(0.5, 1.0), (0.0, 2.4), (0.0, 0.0), (0.0, 0.0)],
    2: [(1.0, 2.0), (0.0, 3.2), (0.0, 0.0), (0.0, 0.0)],
    1: [(3.6, 4.8), (0.5, -1.2)],
}


def hand_model() -> Darknet:
    torch.manual_seed(0)
    m = Darknet(parse_cfg_text(NET))
    with torch.no_grad():
        for i, pairs in PAIRS.items():
            bn = m.module_list[i].bn
            bn.weight.copy_(torch.tensor([g for g, _ in pairs]))
            bn.bias.copy_(torch.tensor([b for _, b in pairs]))
    return m


def class_of(cl: ChannelClasses, layer: int, channel: int) -> int:
    k = cl.layers.index(layer)
    pos = (cl.sel[k] == channel).nonzero().flatten()
    assert len(pos) == 1, (layer, channel)
    return int(cl.cls[k][pos[0]])


def pairs_of(m: Darknet, layer: int) -> list[tuple[float, float]]:
    bn = m.module_list[layer].bn
    return list(zip(bn.weight.tolist(), bn.bias.tolist()))


def test_the_shortcut_ties_conv0_and_conv2_into_two_member_classes():
    cl = ChannelClasses(hand_model(), "shortcut", (32, 32))
    assert cl.layers == [0, 1, 2] and cl.n == 6
    for c in range(4):
        assert class_of(cl, 0, c) == class_of(cl, 2, c)
        assert cl.members[class_of(cl, 0, c)] == 2
    assert cl.members[class_of(cl, 1, 0)] == cl.members[class_of(cl, 1, 1)] == 1


def test_norms_are_of_gamma_and_beta_over_all_members():
    cl = ChannelClasses(hand_model(), "shortcut", (32, 32))
    got = cl.norms()
    for (grp, c), want in NORMS.items():
        k = class_of(cl, 0 if grp == 0 else 1, c)
        assert got[k].item() == pytest.approx(want, rel=1e-6), (grp, c)
    # c=1 has γ = 0 in both members but β = 3, 4: alive, not dead
    assert cl.dead().sum().item() == 0


def test_norms_without_beta_are_of_gamma_alone():
    """with_beta = False (--target-kill path-fold) is the documented γ-only variant."""
    cl = ChannelClasses(hand_model(), "shortcut", (32, 32))
    cl.with_beta = False
    got = cl.norms()
    want = {(0, 0): 5 ** 0.5, (0, 1): 0.0, (0, 2): 0.6, (0, 3): 5.0, (1, 0): 6.0, (1, 1): 0.5}
    for (grp, c), w in want.items():
        assert got[class_of(cl, 0 if grp == 0 else 1, c)].item() == pytest.approx(w, rel=1e-6, abs=1e-7)


def test_prox_shrinks_each_pair_by_the_hand_computed_factor():
    m = hand_model()
    cl = ChannelClasses(m, "shortcut", (32, 32))
    tau = torch.zeros(cl.n)
    for (grp, c), t in TAU.items():
        tau[class_of(cl, 0 if grp == 0 else 1, c)] = t
    factor = cl.prox(tau)
    want_f = {(0, 0): 0.5, (0, 1): 0.8, (0, 2): 0.0, (0, 3): 0.0, (1, 0): 0.6, (1, 1): 1.0}
    for (grp, c), f in want_f.items():
        assert factor[class_of(cl, 0 if grp == 0 else 1, c)].item() == pytest.approx(f, abs=1e-6)
    for layer, want in AFTER.items():
        for (g, b), (wg, wb) in zip(pairs_of(m, layer), want):
            assert g == pytest.approx(wg, abs=1e-6) and b == pytest.approx(wb, abs=1e-6), layer
    # the two killed classes are exactly (0, 0) in both member convs: dead for the pruner
    for layer in (0, 2):
        bn = m.module_list[layer].bn
        assert bn.weight[2].item() == bn.bias[2].item() == bn.weight[3].item() == bn.bias[3].item() == 0.0
    assert cl.dead().sum().item() == 2


def test_training_hook_threshold_is_lr_over_one_minus_momentum_times_s_times_w():
    """One after_step of the prox hook (SGD lr 0.1, momentum 0.5, s = 10, uniform weights):
    τ_c = 0.1 / (1 − 0.5) · 10 · w_c with w = √m / mean(√m) over the 6 classes (four with
    m = 2, two with m = 1): w2 = √2 / ((4√2 + 2)/6) ≈ 1.108, w1 ≈ 0.784, so τ ≈ 2.216 for the
    tied classes and 1.567 for conv 1's. Norms 5, 5, 1, 5 and 10, 1.3 (above)."""
    from yolo_slim.train.sparsity import SparsitySchedule, make_sparsity_hook
    m = hand_model()
    hook = make_sparsity_hook(m, "shortcut", SparsitySchedule(s=10.0), 1, "", update="prox",
                              img_hw=(32, 32))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5)
    hook.after_step(m, opt, 0.1, 0.0)
    mean = (4 * 2 ** 0.5 + 2) / 6
    tau2, tau1 = 0.2 * 10 * 2 ** 0.5 / mean, 0.2 * 10 * 1 / mean
    f = {0: max(0.0, 1 - tau2 / 5), 1: max(0.0, 1 - tau2 / 5), 2: 0.0, 3: max(0.0, 1 - tau2 / 5)}
    for layer in (0, 2):
        for c, ((g, b), (g0, b0)) in enumerate(zip(pairs_of(m, layer), PAIRS[layer])):
            assert g == pytest.approx(g0 * f[c], abs=1e-5) and b == pytest.approx(b0 * f[c], abs=1e-5)
    f1 = [1 - tau1 / 10, 0.0]  # 1.567 > 1.3: conv 1's channel 1 dies
    for c, ((g, b), (g0, b0)) in enumerate(zip(pairs_of(m, 1), PAIRS[1])):
        assert g == pytest.approx(g0 * f1[c], abs=1e-5) and b == pytest.approx(b0 * f1[c], abs=1e-5)
    assert f[0] == pytest.approx(0.5567, abs=1e-3) and f1[0] == pytest.approx(0.8433, abs=1e-3)
