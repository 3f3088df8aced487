"""Warm-up, LR schedule and weight EMA (train/optim.py) against numbers worked out here (issue 28,
tests whose reference is the code under test). The engine tests read the LR and momentum back
from the optimizer that set_lr filled (test_prox's τ = lr/(1 − m)·s·w takes both from there),
and compare the EMA of one run with the EMA of another (resume = straight run): a warm-up that
ramped the wrong group, or an EMA whose decay ramp ran backwards, passed all of them.

Documented: three groups (0: BN weights, 1: conv weights, 2: biases); for micro-batch ni <
n_warm every LR moves linearly from its start (biases: warmup_bias_lr, the rest: 0) to lr0 ·
factor, momentum from warmup_momentum to momentum; cosine factor lrf + (1 − lrf)(1 + cos(π
x/epochs))/2, step factor 0.1^(steps passed); EMA decay d = decay · (1 − e^(−updates/tau)),
ema = d · ema + (1 − d) · model for float tensors, integers copied.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from yolo_slim.train.optim import ModelEMA, build_optimizer, lr_factor, set_lr


def conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))


@pytest.mark.parametrize("ni, factor, want_lr, want_momentum", [
    # lr0 0.01, n_warm 4, warmup_bias_lr 0.1, momentum 0.8 -> 0.937
    (0, 1.0, (0.0, 0.0, 0.1), 0.8),
    (1, 1.0, (0.0025, 0.0025, 0.0775), 0.83425),  # 1/4 of the way: 0.1 + (0.01 - 0.1)/4
    (2, 0.5, (0.0025, 0.0025, 0.0525), 0.8685),  # target 0.005: 0.1 + (0.005 - 0.1)/2
    (4, 1.0, (0.01, 0.01, 0.01), 0.937),  # warm-up over
    (9, 0.3, (0.003, 0.003, 0.003), 0.937),
])
def test_warmup_ramps_each_group_from_its_own_start(ni, factor, want_lr, want_momentum):
    opt = build_optimizer(conv_bn(), 0.01, 0.937, 5e-4)
    got = set_lr(opt, ni, 4, 0.01, factor, 0.937, 0.8, 0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(list(want_lr), abs=1e-15)
    assert [g["momentum"] for g in opt.param_groups] == pytest.approx([want_momentum] * 3, abs=1e-15)
    assert got == pytest.approx(want_lr[1], abs=1e-15)  # what the engine logs: the conv weights'
    # which parameters each group holds, by their shapes: γ (2), kernel (2,1,1,1), β (2)
    assert [[tuple(p.shape) for p in g["params"]] for g in opt.param_groups] == \
        [[(2,)], [(2, 1, 1, 1)], [(2,)]]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]


@pytest.mark.parametrize("schedule, x, want", [
    ("cosine", 0.0, 1.0),
    ("cosine", 2.5, 0.8681980515339464),  # 0.1 + 0.9 (1 + cos(π/4)) / 2
    ("cosine", 5.0, 0.55),
    ("cosine", 10.0, 0.1),
    ("cosine", 12.0, 0.1),  # past the end: stays at lrf
    ("step", 4.99, 1.0),  # steps at 0.5 and 0.8 of 10 epochs
    ("step", 5.0, 0.1),
    ("step", 8.0, 0.01),
])
def test_schedule_factor_by_hand(schedule, x, want):
    assert lr_factor(x, 10, schedule, 0.1, [0.5, 0.8]) == pytest.approx(want, abs=1e-15)


def test_ema_decay_ramps_up_as_documented():
    """decay 0.9, tau 2: d1 = 0.9 (1 − e^−0.5) = 0.354122406, d2 = 0.9 (1 − e^−1) = 0.568908503.
    The kernel (1) meets model values 3 then 5: 0.354122·1 + 0.645878·3 = 2.291755187, then
    0.568909·2.291755 + 0.431091·5 = 3.459256498; running_mean (0) meets 2 then 4: 1.291755187,
    2.459256498; num_batches_tracked is copied."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    for k, (w, rm, seen) in enumerate(((3.0, 2.0, 7), (5.0, 4.0, 9)), 1):
        with torch.no_grad():
            model[0].weight.fill_(w)
            model[1].running_mean.fill_(rm)
            model[1].num_batches_tracked.fill_(seen)
        ema.update(model)
        assert ema.updates == k
    assert ema.ema[0].weight.item() == pytest.approx(3.459256498100342, rel=1e-6)
    assert ema.ema[1].running_mean.item() == pytest.approx(2.4592564981003426, rel=1e-6)
    assert ema.ema[1].num_batches_tracked.item() == 9
    assert not any(p.requires_grad for p in ema.ema.parameters())
