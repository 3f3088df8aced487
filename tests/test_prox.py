"""The proximal sparsity step (yolo_slim.train.prox + the sparsity hook): exact zeros that the step
never revives, classes dying whole, FLOPs weights, cutting dead channels is exact at every pixel,
the FLOPs controller meets its target, and the penalty's effect does not depend on AMP, gradient
accumulation, DDP world size or an interrupted run; what is saved holds the exact zeros."""
from __future__ import annotations

import copy
import csv
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from yolo_slim.analysis.graph import build_graph
from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.weights import read_checkpoint
from yolo_slim.nn.model import Darknet, conv_layers
from yolo_slim.prune.compact import compact_model
from yolo_slim.prune.fold import apply_masks
from yolo_slim.prune.masks import MaskSolver, dead_nodes
from yolo_slim.train.engine import TrainConfig, TrainHooks, optimizer_step, train
from yolo_slim.train.prox import ChannelClasses, FlopsController
from yolo_slim.train.sparse_setup import make_train_hooks
from yolo_slim.train.sparsity import SparsitySchedule, make_sparsity_hook

from cfgs import conv_section, head_sections, maxpool_section, net_section, route_section, \
    shortcut_section

# 64 px: a 3x3 conv at full size, a residual block at 32 px (convs 2 and 4 share one mask),
# a stride-2 conv, upsample + route back to 32 px, one head (5 classes)
NET = (net_section(64) + conv_section(8, 3, 1) + maxpool_section(2, 2) + conv_section(16, 3, 1)
       + conv_section(8, 1, 1) + conv_section(16, 3, 1) + shortcut_section(-3)
       + conv_section(16, 3, 2) + conv_section(8, 1, 1) + "[upsample]\nstride=2\n"
       + route_section(-1, 5) + conv_section(16, 3, 1) + head_sections(5, ((8, 8), (16, 16), (32, 32))))


def model(seed: int = 0) -> Darknet:
    torch.manual_seed(seed)
    m = Darknet(parse_cfg_text(NET))
    g = torch.Generator().manual_seed(seed)
    for _, c in conv_layers(m):
        if c.bn is not None:  # trained-looking BN: both signs, running stats away from 0/1
            n = c.bn.weight.numel()
            c.bn.weight.data = torch.randn(n, generator=g)
            c.bn.bias.data = torch.randn(n, generator=g) * 0.5
            c.bn.running_mean.data = torch.randn(n, generator=g) * 0.1
            c.bn.running_var.data = torch.rand(n, generator=g) + 0.5
    return m


def pairs(m: Darknet, cl: ChannelClasses) -> list[torch.Tensor]:
    """Per prunable layer, the [channels, 2] (γ, β) of its penalised channels."""
    return [torch.stack([bn.weight[s], bn.bias[s]], 1).detach().clone() for bn, s in zip(cl.bns, cl.sel)]


def test_prox_leaves_exact_zeros_and_never_revives_a_dead_channel():
    m = model()
    cl = ChannelClasses(m, "shortcut", (64, 64))
    assert cl.layers == [0, 2, 3, 4, 6, 7, 10]  # the head conv has no BN
    # the shortcut group {2, 4} is one set of 16 classes with 2 members each
    assert cl.n == 8 + 16 + 8 + 16 + 8 + 16 and sorted(set(cl.members.tolist())) == [1, 2]
    before = pairs(m, cl)
    norm = cl.norms()
    tau = torch.full((cl.n,), float(norm.median()))
    cl.prox(tau)
    after = pairs(m, cl)
    dead = cl.dead()
    assert (norm <= tau).sum() == dead.sum() > 0  # the smaller half died ...
    for b, a, c in zip(before, after, cl.cls):
        d = dead[c]
        assert (a[d] == 0).all()  # ... exactly: γ = β = 0, not merely small
        f = (1 - tau[c] / norm[c]).clamp_min(0)[:, None]
        torch.testing.assert_close(a[~d], b[~d] * f[~d], rtol=1e-6, atol=0)
    # the shortcut group died whole: layer 2 and layer 4 channels c dead together
    assert torch.equal(m.module_list[2].bn.weight == 0, m.module_list[4].bn.weight == 0)
    # the prox never makes a zero nonzero: any threshold, including 0, keeps the dead dead
    for t in (0.0, 1e-9, 10.0):
        cl.prox(torch.full((cl.n,), t))
        assert dead.logical_and(~cl.dead()).sum() == 0
    # a zero threshold is the identity on live classes (multiplication by exactly 1)
    m2 = model()
    cl2 = ChannelClasses(m2, "shortcut", (64, 64))
    ref = pairs(m2, cl2)
    cl2.prox(torch.zeros(cl2.n))
    assert all(torch.equal(a, b) for a, b in zip(ref, pairs(m2, cl2)))


def test_flops_weights_are_what_removing_a_class_saves():
    m = model()
    u, f = ChannelClasses(m, "shortcut", (64, 64)), ChannelClasses(m, "shortcut", (64, 64), "flops")
    # w = cost / √m, mean 1: uniform cost = m channels, so a shortcut group's class (m = 2)
    # weighs √2 × a single channel's — its norm is √2 × one channel's of the same size
    m_ = torch.as_tensor(u.members, dtype=torch.float32)
    torch.testing.assert_close(u.weight, m_.sqrt() / m_.sqrt().mean())
    assert sorted(set(torch.round(u.weight / u.weight.min(), decimals=4).tolist())) == \
        pytest.approx([1.0, 1.4142])
    # so a class is ranked per channel: with every channel's (γ, β) alike, a shortcut group's
    # class (norm √2 × a single channel's) and a single channel are equally cheap to kill
    with torch.no_grad():
        for bn in u.bns:
            bn.weight.fill_(0.6), bn.bias.fill_(-0.8)
    rank = u.norms() / u.weight
    torch.testing.assert_close(rank, torch.full_like(rank, float(rank[0])))
    assert f.weight.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(f.weight.double(), torch.as_tensor(f.saving / np.sqrt(f.members)
                                                                  / (f.saving / np.sqrt(f.members)).mean()))
    # layer 0 (64x64, 3 -> 8, feeding the maxpool then conv 2 at 32x32: 8 -> 16, 3x3):
    # a channel saves 2*64*64*9*3 + 2*32*32*9*16
    c0 = int(f.cls[0][0])
    assert f.saving[c0] == 2 * 64 * 64 * 9 * 3 + 2 * 32 * 32 * 9 * 16
    # cutting the classes: flops_if_cut agrees with the saving to first order for one class
    dead = torch.zeros(f.n, dtype=torch.bool)
    dead[c0] = True
    assert (1 - f.flops_if_cut(dead)) * f.flops_full == pytest.approx(f.saving[c0])


def kill_classes(m: Darknet, strategy: str = "shortcut", share: float = 0.5) -> ChannelClasses:
    cl = ChannelClasses(m, strategy, (64, 64))
    norm = cl.norms()
    cl.prox(torch.full((cl.n,), float(norm.quantile(share))))
    return cl


@pytest.mark.parametrize("strategy", ["shortcut", "slim", "normal"])
def test_cutting_dead_channels_equals_the_unmasked_model_at_every_pixel(strategy):
    m = model(1).eval()
    cl = kill_classes(m, strategy)
    assert cl.dead().sum() > 0
    g = build_graph(m.module_defs)
    solver = MaskSolver(g, np.abs(np.nan_to_num(np.zeros(len(g.root)))), strategy, img_hw=(64, 64))
    dead = dead_nodes(m, g)
    keep = solver.dead_keep(dead)
    n_dead_classes = int(cl.dead().sum())
    assert len(np.unique(g.root[~keep])) == n_dead_classes  # every dead class is cut, no live one
    folded = copy.deepcopy(m)
    apply_masks(folded, g, keep, fold=True)
    compact = compact_model(folded, g, keep).eval()
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in m.parameters())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = m.forward_raw(x), compact.forward_raw(x)
    for r, o in zip(ref, out):  # the whole map: interior and zero-padded borders alike
        assert (r - o).abs().max().item() <= 1e-5 * max(1.0, r.abs().max().item())
    # a live channel is never cut by --dead, even a tiny one
    rep = solver.dead_report(dead, percent=0.9)
    assert rep["dead_deciders"] == int((~keep[solver.deciders]).sum())
    assert rep["live_cut_by_percent"] > 0


def controller_run(target: float, steps: int = 60, weight: str = "uniform", seed: int = 0):
    """A tiny model pulled toward its own initial outputs (the loss resists the penalty), SGD
    with momentum, the hook's after_step called as the engine does."""
    m = model(seed).train()
    teacher = copy.deepcopy(m).eval()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    hook = make_sparsity_hook(m, "shortcut", SparsitySchedule(s=0.01), 1, "", update="prox",
                              weight=weight, target_flops=target, recover=0.3, img_hw=(64, 64))
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = teacher.forward_raw(x)
    at_freeze = None
    for t in range(steps):
        loss = sum((a - b).square().mean() for a, b in zip(m.forward_raw(x), want))
        opt.zero_grad()
        loss.backward()
        opt.step()
        p = (t + 1) / steps
        if at_freeze is None and not hook.controller.shrinking(p):
            at_freeze = hook.classes.flops_if_cut(hook.last_dead)
        hook.after_step(m, opt, 0.05, p)
    return hook, at_freeze


@pytest.mark.parametrize("target,weight", [(0.5, "uniform"), (0.3, "flops")])
def test_controller_meets_a_flops_target(target, weight):
    hook, at_freeze = controller_run(target, weight=weight)
    f = hook.classes.flops_if_cut(hook.classes.dead())
    # the run ends at the target (the freeze completes the dead set, never overshooting by much)
    assert target - 0.05 <= f <= target, f
    # the controller alone got there within 0.1 before the freeze had to help
    assert abs(at_freeze - target) <= 0.1, at_freeze
    assert hook.s_now == 0.0 and hook.controller.frozen  # recovery: s = 0, dead set held


def test_cut_to_target_respects_the_layer_floor():
    """With FLOPs weights the cheapest classes are all high-resolution ones: without a floor the
    target is met by emptying the first convs; with layer_keep every conv keeps its share."""
    m = model()
    for _, c in conv_layers(m):  # equal norms: the order is by cost alone
        if c.bn is not None:
            c.bn.weight.data.fill_(1.0)
            c.bn.bias.data.zero_()
    for keep in (0.0, 0.25):
        cl = ChannelClasses(m, "shortcut", (64, 64), "flops", layer_keep=keep)
        dead = cl.cut_to_target(torch.zeros(cl.n, dtype=torch.bool), 0.3)
        assert cl.flops_if_cut(dead) <= 0.3
        alive = {i: int((~dead[c]).sum()) for i, c in zip(cl.layers, cl.cls)}
        if keep:
            assert all(alive[i] >= math.ceil(keep * len(c)) for i, c in zip(cl.layers, cl.cls))
        else:
            assert alive[0] == 1  # the 64x64 conv emptied down to the one channel always kept


def test_controller_law():
    c = FlopsController(target=0.4, s=0.01, recover=0.2, ramp=0.5, gain=8.0)
    assert c.path(0.0) == 1.0 and c.path(0.4) == pytest.approx(0.4) and c.path(0.6) == pytest.approx(0.4)
    s = c.update(0.1, 1.0)  # behind the path (0.85): s grows
    assert s == pytest.approx(0.01 * np.exp(8 * 0.25 * 0.1 / 0.8))
    s2 = c.update(0.2, 0.5)  # ahead of the path (0.7): s falls
    assert s2 < s
    assert c.shrinking(0.79) and not c.shrinking(0.8)


def one_step(amp: bool, accumulate: int):
    """One optimizer step of the engine's optimizer_step on the same batch: plain, under an
    enabled (CPU) GradScaler, or accumulated over `accumulate` micro-batches."""
    m = model(3).eval()  # eval: BN uses running stats, so micro-batches sum to the full batch
    hook = make_sparsity_hook(m, "shortcut", SparsitySchedule(s=2.0), 1, "", update="prox",
                              img_hw=(64, 64))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=amp, init_scale=2.0 ** 12)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for xb in x.chunk(accumulate):
        loss = sum(r.square().mean() for r in m.forward_raw(xb)) / accumulate
        scaler.scale(loss).backward()
    optimizer_step(m, opt, scaler, [hook], 0, 0.1, 1.0)
    return m, hook


def test_penalty_is_the_same_with_amp_and_with_accumulation():
    ref, h = one_step(False, 1)
    assert h.classes.dead().sum() > 0  # the step killed some classes
    for amp, acc in ((True, 1), (False, 2), (True, 4)):
        m, hk = one_step(amp, acc)
        assert torch.equal(hk.classes.dead(), h.classes.dead()), (amp, acc)
        for (k, a), b in zip(ref.state_dict().items(), m.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


class Spy(TrainHooks):
    """Records the class norms at after_step (placed before and after the sparsity hook) and the
    step size of the γ group."""

    def __init__(self, classes, record_lr: bool):
        self.classes, self.record_lr, self.norms, self.steps = classes, record_lr, [], []

    def after_step(self, model, optimizer, lr, progress):
        self.norms.append(self.classes.norms())
        if self.record_lr:
            g = optimizer.param_groups[0]
            self.steps.append(g["lr"] / (1 - g["momentum"]))


def check_prox_steps(before: Spy, after: Spy, s: float, weight: torch.Tensor) -> int:
    """Every step shrank every class norm by exactly τ = lr/(1 − m)·s·w (to 0 at most)."""
    for pre, post, step in zip(before.norms, after.norms, before.steps):
        expect = (pre - step * s * weight).clamp_min(0)
        torch.testing.assert_close(post, expect, rtol=1e-5, atol=1e-6)
    return len(before.norms)


def config(data, out, **kw) -> TrainConfig:
    base = dict(data=data, output_dir=str(out), img_size=64, batch_size=4, nominal_batch=4,
                epochs=2, workers=0, device="cpu", progress=False, warmup_epochs=0.5,
                sr=True, prune=1, s=0.5, sparsity_update="prox", ema_tau=2.0)
    return TrainConfig(**{**base, **kw})


def spied_hooks(cfg, m):
    hook = make_train_hooks(cfg, m)[0]
    return [Spy(hook.classes, True), hook, Spy(hook.classes, False)]


@pytest.mark.parametrize("ema", [True, False])
def test_engine_accumulation_steps_and_saved_zeros(shapes_data, tmp_path, ema):
    """Accumulating 2 micro-batches: the prox runs once per optimizer step with the same τ; the
    saved models (EMA or raw in last.pt/best.pt, raw train_model) hold exactly the same dead set."""
    cfg = config(shapes_data, tmp_path, batch_size=2, nominal_batch=4, sparsity_weight="flops",
                 ema=ema)
    m = model()
    hooks = spied_hooks(cfg, m)
    train(cfg, m, hooks)
    assert check_prox_steps(hooks[0], hooks[2], 0.5, hooks[1].classes.weight) == 2 * 2  # 8 imgs / 4
    ck = read_checkpoint(str(tmp_path / "last.pt"))
    best = read_checkpoint(str(tmp_path / "best.pt"))
    cl = hooks[1].classes
    assert cl.dead().sum() > 0

    def dead_of(sd, i):
        return (sd[f"module_list.{i}.bn.weight"] == 0) & (sd[f"module_list.{i}.bn.bias"] == 0)
    for i in cl.layers:  # last.pt: the EMA holds exactly the raw model's dead set
        assert torch.equal(dead_of(ck["model"], i), dead_of(ck["train_model"], i)), i
    # best.pt (an earlier or the last epoch): its dead classes are whole, zeros exact
    saved = model()
    saved.load_state_dict(best["model"])
    dead_best = ChannelClasses(saved, "shortcut", (64, 64)).dead()
    assert dead_best.sum() > 0 and sum(int(dead_of(best["model"], i).sum()) for i in cl.layers) == \
        int(cl.members[dead_best.numpy()].sum())
    with open(tmp_path / "results.csv") as f:
        r = list(csv.DictReader(f))
    assert int(r[-1]["dead"]) == int(cl.members[cl.dead().numpy()].sum()) > 0
    assert 0 < float(r[-1]["flops_if_cut"]) < 1 and float(r[-1]["s_mean"]) == 0.5


class StopAt(TrainHooks):
    def epoch_start(self, epoch, model):
        if epoch == 1:
            raise KeyboardInterrupt


def test_target_flops_run_resumes_exactly(shapes_data, tmp_path):
    kw = dict(epochs=3, s=0.05, target_flops=0.5, target_recover=0.34)
    a = model()
    train(config(shapes_data, tmp_path / "a", **kw), a, make_train_hooks(config(shapes_data, tmp_path / "a", **kw), a))
    b = model()
    cb = config(shapes_data, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cb, b, make_train_hooks(cb, b) + [StopAt()])
    resumed = model()
    rc = TrainConfig(resume=str(tmp_path / "b" / "last.pt"), device="cpu", workers=0, progress=False)
    train(rc, resumed, make_train_hooks(cb, resumed))
    for (k, x), y in zip(a.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), k
    with open(tmp_path / "a" / "results.csv") as f:
        ra = list(csv.DictReader(f))
    with open(tmp_path / "b" / "results.csv") as f:
        rb = list(csv.DictReader(f))
    assert [r["flops_if_cut"] for r in ra] == [r["flops_if_cut"] for r in rb]
    assert [r["s_mean"] for r in ra] == [r["s_mean"] for r in rb]
    # the run ended at the target (the last third frozen with s = 0)
    assert float(ra[-1]["flops_if_cut"]) <= 0.5 and float(ra[-1]["s_mean"]) == 0.0
    # best.pt is chosen among the epochs after the freeze: its dead channels meet the target
    best = model()
    best.load_state_dict(read_checkpoint(str(tmp_path / "a" / "best.pt"))["model"])
    cl = ChannelClasses(best, "shortcut", (64, 64))
    assert cl.flops_if_cut(cl.dead()) <= 0.5


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, log_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = config(data, out, epochs=1, s=5.0)
    m = model()
    hooks = spied_hooks(cfg, m)
    train(cfg, m, hooks)
    n = check_prox_steps(hooks[0], hooks[2], 5.0, hooks[1].classes.weight)
    torch.save({"params": [p.detach() for p in m.parameters()], "steps": n,
                "dead": hooks[1].classes.dead()}, os.path.join(log_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("world", [1, 2])
def test_ddp_prox_after_all_reduce_identical_on_every_rank(shapes_data, tmp_path, world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(world, port, shapes_data, str(tmp_path / "run"), str(tmp_path)),
             nprocs=world, join=True)
    r = [torch.load(tmp_path / f"rank{k}.pt") for k in range(world)]
    assert r[0]["steps"] == 2 and r[0]["dead"].sum() > 0  # τ = lr/(1-m)·s·w checked in-worker
    for other in r[1:]:
        assert torch.equal(other["dead"], r[0]["dead"])
        assert all(torch.equal(a, b) for a, b in zip(r[0]["params"], other["params"]))


def test_engine_does_not_import_sparsity_and_defaults_agree():
    """The import goes sparsity -> engine, never back; the flags' defaults are the schedule's."""
    import subprocess
    import sys
    code = ("import sys, yolo_slim.train.engine as e; "
            "assert not any(m.startswith('yolo_slim.train.sparsity') or m.startswith('yolo_slim.train.prox') "
            "for m in sys.modules), 'engine imported sparsity'")
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
    c, d = TrainConfig(), SparsitySchedule()
    assert (c.sparsity_decay_start, c.sparsity_decay_factor, c.sparsity_keep_fraction) == \
        (d.decay_start, d.decay_factor, d.keep_fraction)


def test_subgradient_path_takes_the_flops_weights_too():
    """--sparsity-update subgradient: grad(γ) += s·w_c·sign(γ) (uniform: the older tools' s·sign(γ))."""
    for weight in ("uniform", "flops"):
        m = model()
        hook = make_sparsity_hook(m, "shortcut", SparsitySchedule(s=0.01), 1, "",
                                  update="subgradient", weight=weight, img_hw=(64, 64))
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        hook.after_backward(m, 0)
        ws = hook.classes.channel_weights()
        for bn, w in zip(hook.classes.bns, ws):
            torch.testing.assert_close(bn.weight.grad, 0.01 * w * torch.sign(bn.weight.detach()))
        assert (weight == "uniform") == all(bool((w == 1).all()) for w in ws)
        # each member channel carries its class's cost per member: summed over a class's
        # members the subgradient's weight is proportional to what removing the class saves
        cl = hook.classes
        per_class = torch.zeros(cl.n, dtype=torch.float64)
        for w, sel, c in zip(ws, cl.sel, cl.cls):
            per_class.index_add_(0, c, w[sel].double())
        ratio = per_class / torch.as_tensor(cl.cost, dtype=torch.float64)
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))
        assert sorted(set(cl.members.tolist())) == [1, 2]  # the shortcut group is in the check


def test_latency_weights_follow_the_table(tmp_path):
    """--sparsity-weight latency: w_c is the predicted latency removing class c saves. With a
    table whose times are linear in cin·cout (FLOPs-like, no alignment effects) it equals the
    FLOPs weight; a conv whose time does not fall with its width gives its channels no weight
    from it; the hook reads the table from --latency-table and refuses to run without one."""
    from yolo_slim.analysis.latency import measure_table
    from yolo_slim.core.errors import YoloSlimError

    def linear(spec, cin, cout):  # ms ∝ the conv's FLOPs at these counts (+ a constant)
        h, w = spec["in_hw"]
        return 0.01 + 1e-6 * h * w * spec["size"] ** 2 * cin * cout / (spec["stride_y"] * spec["stride_x"])
    m = model()
    # align 1: every count is its own block, so the grid reaches 1 channel and interpolation of
    # a bilinear time is exact (with the default 8, a conv 8 wide is one block: flat below it)
    table = measure_table(m.module_defs, (64, 64), linear, align=1)
    lat = ChannelClasses(m, "shortcut", (64, 64), "latency", latency=table)
    flops = ChannelClasses(m, "shortcut", (64, 64), "flops")
    assert lat.weight.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(lat.weight, flops.weight, rtol=1e-3, atol=1e-3)
    # conv 0's time made flat in its output count: its channels weigh only what they save in
    # the conv that reads them (conv 2, after the maxpool)
    flat = measure_table(m.module_defs, (64, 64), align=1, timer=lambda spec, ci, co: linear(
        spec, ci, spec["cout"] if spec["cin"] == 3 else co))
    lat_flat = ChannelClasses(m, "shortcut", (64, 64), "latency", latency=flat)
    own = lat.cls[lat.layers.index(0)]
    raw, raw_flat = torch.as_tensor(lat.cost), torch.as_tensor(lat_flat.cost)
    f0 = 1e-6 * 64 * 64 * 9 * 3  # conv 0: ms per output channel
    torch.testing.assert_close(raw_flat[own], raw[own] - f0, rtol=1e-3, atol=1e-7)
    # a table in which no cut saves anything (every time constant): the uniform weights
    const = measure_table(m.module_defs, (64, 64), align=1, timer=lambda spec, ci, co: 0.5)
    torch.testing.assert_close(ChannelClasses(m, "shortcut", (64, 64), "latency", latency=const).weight,
                               ChannelClasses(m, "shortcut", (64, 64)).weight)
    # through the flags: the hook loads --latency-table; without one it is a clear error
    path = tmp_path / "t.json"
    table.save(str(path))
    hook = make_train_hooks(config("unused.data", tmp_path, sparsity_weight="latency",
                                   latency_table=str(path)), model())[0]
    torch.testing.assert_close(hook.classes.weight, lat.weight)
    with pytest.raises(YoloSlimError, match="--latency-table"):
        make_train_hooks(config("unused.data", tmp_path, sparsity_weight="latency"), model())
    path.write_text('{"meta": 1}')
    with pytest.raises(YoloSlimError, match="not a latency table"):
        make_train_hooks(config("unused.data", tmp_path, sparsity_weight="latency",
                                latency_table=str(path)), model())


def fade_run(target: float, kill: str, importance: str = "norm", steps: int = 100):
    """controller_run with --target-kill path*: the loss resists, after_backward sees the
    gradients (Taylor scores), after_step fades; records FLOPs if cut and the dead count."""
    from yolo_slim.train import sparsity
    m = model(0).train()
    teacher = copy.deepcopy(m).eval()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    hook = make_sparsity_hook(m, "shortcut", SparsitySchedule(s=0.01), 1, "", update="prox",
                              target_flops=target, recover=0.3, img_hw=(64, 64), kill=kill,
                              importance=importance)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = teacher.forward_raw(x)
    trace = []
    for t in range(steps):
        loss = sum((a - b).square().mean() for a, b in zip(m.forward_raw(x), want))
        opt.zero_grad()
        loss.backward()
        hook.after_backward(m, t)
        opt.step()
        p = (t + 1) / steps
        hook.after_step(m, opt, 0.01, p)
        trace.append((p, hook.classes.flops_if_cut(hook.last_dead), int(hook.last_dead.sum())))
    span = sparsity.FADE * (1 - 0.3)
    return hook, trace, span


@pytest.mark.parametrize("kill,importance", [("path", "norm"), ("path", "taylor"), ("path-fold", "taylor")])
def test_path_kill_follows_the_flops_path_without_a_cliff(kill, importance):
    """Channels die along the path, each over FADE of the shrink phase: the FLOPs of the dead
    set are never ahead of the path and at most `span` behind it, no step kills more than a
    few classes, and the target is met at the freeze with exact zeros (path: (γ, β) = (0, 0);
    path-fold: γ = 0 with β untouched, its constant left for the cut to fold)."""
    hook, trace, span = fade_run(0.5, kill, importance)
    c = hook.controller
    n = hook.classes.n
    for p, f, _ in trace:
        if c.shrinking(p):
            assert f >= c.path(p) - 0.05, (p, f)                  # never ahead of the path
            assert f <= c.path(max(p - span - 0.02, 0)) + 0.05, (p, f)  # never far behind
    deaths = np.diff([0] + [d for _, _, d in trace])
    assert deaths.max() <= max(3, 0.1 * n), deaths.max()  # no cliff
    assert trace[-1][1] <= 0.5 and c.frozen
    dead = hook.classes.dead()
    for bn, sel, cls in zip(hook.classes.bns, hook.classes.sel, hook.classes.cls):
        d = dead[cls]
        assert torch.all(bn.weight[sel][d] == 0)
        if kill == "path":
            assert torch.all(bn.bias[sel][d] == 0)
    if kill == "path-fold":
        assert any(torch.any(bn.bias[sel][dead[cls]] != 0) for bn, sel, cls in
                   zip(hook.classes.bns, hook.classes.sel, hook.classes.cls))


def test_taylor_scores_are_the_first_order_loss_change():
    """classes.taylor() = Σ_members (γ ∂L/∂γ + β ∂L/∂β)², and for a tiny change that first-order
    term predicts the loss change of scaling a class's pair by (1 - ε)."""
    m = model(1)
    cl = ChannelClasses(m, "shortcut", (64, 64))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loss = lambda: sum(r.square().mean() for r in m.forward_raw(x))  # noqa: E731
    m.zero_grad()
    loss().backward()
    t = cl.taylor()
    bn, sel, cls = cl.bns[0], cl.sel[0], cl.cls[0]
    k = int(cls[0])
    members = [(b, s[c == k]) for b, s, c in zip(cl.bns, cl.sel, cl.cls) if (c == k).any()]
    want = sum(float(((b.weight * b.weight.grad + b.bias * b.bias.grad)[s] ** 2).sum()) for b, s in members)
    assert t[k].item() == pytest.approx(want, rel=1e-5)
    eps = 1e-3
    first = sum(float((b.weight * b.weight.grad + b.bias * b.bias.grad)[s].sum()) for b, s in members)
    with torch.no_grad():
        before = float(loss())
        f = torch.ones(cl.n)
        f[k] = 1 - eps
        cl.scale(f)
        after = float(loss())
    assert after - before == pytest.approx(-eps * first, rel=0.05, abs=1e-9)
