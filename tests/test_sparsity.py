"""L1 subgradient on BN γ: exact added amount, schedules per channel/epoch, AMP scale."""
import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet, conv_layers
from yolo_slim.train.gamma_plot import GammaHistory
from yolo_slim.train.sparsity import BNSparsity, SparsitySchedule

from cfgs import conv_section, net_section, yolo_section

TINY = (net_section() + conv_section(8, 3, 2) + conv_section(6, 3, 1)
        + conv_section(6, 1, 1, bn=False, act="linear", pad=None) + yolo_section([0], [(10, 14)], 1))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    m = Darknet(parse_cfg_text(TINY))
    for _, c in conv_layers(m):
        if c.bn is not None:
            c.bn.weight.data = torch.randn_like(c.bn.weight)  # both signs, to test sign()
    return m


def plain_grads(m, x):
    m.zero_grad()
    sum(r.square().mean() for r in m(x)).backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def test_hook_adds_exactly_s_sign_gamma_to_prunable_only():
    m = tiny_model().train()
    x = torch.rand(2, 3, 64, 64)
    before = plain_grads(m, x)
    sp = BNSparsity(m, [0], SparsitySchedule(s=0.01))  # layer 1 is BN too but not prunable
    sp.apply(epoch=0, epochs=10)
    for n, p in m.named_parameters():
        if n == "module_list.0.bn.weight":
            expect = before[n] + 0.01 * torch.sign(p.detach())
            assert torch.equal(p.grad, expect)
            assert (p.grad - before[n]).abs().max().item() == pytest.approx(0.01)
        else:
            assert torch.equal(p.grad, before[n]), n


def test_schedules_give_the_right_s_per_channel_and_epoch():
    g = [torch.tensor([0.1, 0.9, 0.5, 0.05]), torch.tensor([0.8, 0.2, 0.3, 0.4, 0.6, 0.7])]
    const = SparsitySchedule(s=1e-3, kind="constant")
    for ep in (0, 5, 9):
        assert all(torch.equal(s, torch.full_like(x, 1e-3)) for s, x in zip(const.channel_s(g, ep, 10), g))
    glob = SparsitySchedule(s=1e-3, kind="global-decay", decay_start=0.5, decay_factor=0.01)
    assert glob.channel_s(g, 4, 10)[0][0].item() == pytest.approx(1e-3)
    assert all(torch.allclose(s, torch.full_like(x, 1e-5)) for s, x in zip(glob.channel_s(g, 5, 10), g))
    loc = SparsitySchedule(s=1e-3, kind="local-decay", decay_start=0.5, decay_factor=0.01,
                           keep_fraction=0.2)
    assert all(torch.equal(s, torch.full_like(x, 1e-3)) for s, x in zip(loc.channel_s(g, 4, 10), g))
    s0, s1 = loc.channel_s(g, 5, 10)  # 10 channels, the 2 largest |γ| (0.9, 0.8) decay
    assert torch.allclose(s0, torch.tensor([1e-3, 1e-5, 1e-3, 1e-3]))
    assert torch.allclose(s1, torch.tensor([1e-5, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3]))


def test_with_grad_scaler_the_added_amount_is_s_not_s_times_scale():
    m = tiny_model().train()
    x = torch.rand(2, 3, 64, 64)
    ref = plain_grads(m, x)["module_list.0.bn.weight"]
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    m.zero_grad()
    scaler.scale(sum(r.square().mean() for r in m(x))).backward()
    scaler.unscale_(opt)  # the engine's order: unscale, then the penalty, then step
    BNSparsity(m, [0], SparsitySchedule(s=0.01)).apply(0, 1)
    g = m.module_list[0].bn.weight
    assert torch.allclose(g.grad - ref, 0.01 * torch.sign(g.detach()), atol=1e-6)


def test_stats_and_history_png(tmp_path):
    m = tiny_model()
    m.module_list[0].bn.weight.data = torch.tensor([0.0, 0.005, 0.02, 0.5, 1.0, -0.001, 2.0, 3.0])
    m.module_list[1].bn.weight.data = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    sp = BNSparsity(m, [0, 1], SparsitySchedule())
    st = sp.stats()
    assert st["gamma_lt_0.01"] == pytest.approx(4 / 14)
    assert st["gamma_q50"] == pytest.approx(float(torch.quantile(sp.abs_gamma(), 0.5)))
    h = GammaHistory()
    for e in range(3):
        h.add(e, sp.abs_gamma())
    h.draw(str(tmp_path / "g.png"))
    import cv2
    img = cv2.imread(str(tmp_path / "g.png"))
    assert img is not None and img.shape[1] == 760


def test_non_bn_layer_is_rejected_and_unknown_schedule():
    with pytest.raises(ValueError):
        BNSparsity(tiny_model(), [2], SparsitySchedule())
    with pytest.raises(ValueError):
        SparsitySchedule(kind="cosine")


def test_train_flags_reach_the_schedule(tmp_path):
    """--sparsity-decay-start/-factor/--sparsity-keep-fraction from the command line set the
    schedule the hook applies (global-decay: s x factor from the start epoch on)."""
    import argparse

    from yolo_slim.train.engine import TrainConfig
    from yolo_slim.core.errors import YoloSlimError
    from yolo_slim.train.sparse_setup import make_train_hooks
    p = argparse.ArgumentParser()
    TrainConfig.add_args(p)
    args = ["--sr", "--sparsity-update", "subgradient", "--s", "0.01", "--sparsity", "global-decay", "--sparsity-decay-start", "0.2",
            "--sparsity-decay-factor", "0.1", "--epochs", "10", "--output-dir", str(tmp_path)]
    cfg = TrainConfig.from_args(p.parse_args(args))
    m = tiny_model().train()
    x = torch.rand(2, 3, 64, 64)
    for epoch, s in ((1, 0.01), (2, 0.001)):
        before = plain_grads(m, x)
        hook = make_train_hooks(cfg, m)[0]
        hook.epoch_start(epoch, m)
        hook.after_backward(m, 0)
        w = m.module_list[0].bn.weight
        added = (w.grad - before["module_list.0.bn.weight"]).abs().max().item()
        assert added == pytest.approx(s), epoch
    bad = TrainConfig.from_args(p.parse_args(args + ["--sparsity-keep-fraction", "1.5"]))
    with pytest.raises(YoloSlimError, match="must be in"):
        make_train_hooks(bad, m)
