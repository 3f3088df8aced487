"""Distillation through the engine: frozen teacher, gradients only in the student, the loss
falls over a few steps, chen logs its active-anchor fraction, mismatched heads are refused."""
from __future__ import annotations

import csv
import math
import os

import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.train import distill
from yolo_slim.train.distill import DistillConfig, make_distill_hook
from yolo_slim.train.engine import TrainConfig, train
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.train.loss import LossHyp, yolo_loss
from yolo_slim.nn.model import Darknet
from yolo_slim.nn.weights import save_checkpoint


def cfg_text(width: int, classes: int = 5, anchors: str = "8,8, 16,16, 32,32") -> str:
    conv = "[convolutional]\nbatch_normalize=1\nfilters={}\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
    return ("[net]\nwidth=64\nheight=64\n" + conv.format(width) + conv.format(2 * width)
            + conv.format(2 * width) + f"[convolutional]\nsize=1\nstride=1\nfilters={3 * (classes + 5)}\n"
            f"activation=linear\n[yolo]\nmask=0,1,2\nanchors={anchors}\nclasses={classes}\nnum=3\n")


def model(width: int, seed: int, **kw) -> Darknet:
    torch.manual_seed(seed)
    return Darknet(parse_cfg_text(cfg_text(width, **kw)))


def train_cfg(data: str, out, **kw) -> TrainConfig:
    base = dict(data=data, output_dir=str(out), img_size=64, batch_size=4, nominal_batch=4,
                epochs=3, workers=0, device="cpu", progress=False, warmup_epochs=0.0,
                eval_interval=100, lr0=0.01)
    return TrainConfig(**{**base, **kw})


def test_mismatched_heads_are_refused_clearly():
    with pytest.raises(YoloSlimError, match="5 classes vs the teacher's 3"):
        make_distill_hook(model(4, 0), model(8, 0, classes=3), DistillConfig("hinton"))
    with pytest.raises(YoloSlimError, match="anchors"):
        make_distill_hook(model(4, 0), model(8, 0, anchors="9,9, 16,16, 32,32"), DistillConfig("chen"))
    assert make_distill_hook(model(4, 0), None, DistillConfig("none")) is None


@pytest.mark.parametrize("mode", ["hinton", "chen"])
def test_teacher_frozen_student_learns(shapes_data, tmp_path, mode):
    student, teacher = model(4, 0), model(8, 1)
    teacher.train()  # the hook must put it in eval mode: its BN statistics never move
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    hook = make_distill_hook(student, teacher, DistillConfig(mode, kd_weight=1.0, margin=0.0))
    train(train_cfg(shapes_data, tmp_path, ema=False, obj=32.0, cls=8.0, anchor_t=3.0), student, [hook])
    # the KD terms ran with the training config's gains (the YOLO loss's LossHyp), not defaults
    assert hook.hyp == LossHyp(box=3.2, obj=32.0, cls=8.0, anchor_t=3.0)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    changed = [k for k, v in s_before.items() if not torch.equal(v, student.state_dict()[k])]
    assert any(k.endswith("conv.weight") for k in changed)
    with open(os.path.join(tmp_path, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["kd"]) > 0
    if mode == "chen":
        frac = [float(r["kd_box_active"]) for r in rows]
        assert all(0.0 <= v <= 1.0 for v in frac) and max(frac) > 0


def kl_closed_form(s: float, t: float, T: float) -> float:
    pt, ps = 1 / (1 + math.exp(-t / T)), 1 / (1 + math.exp(-s / T))
    return (pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))) * T * T


def fixed_teacher(raw: list[torch.Tensor], seed: int = 1) -> Darknet:
    """A real teacher (heads checked, frozen) whose forward_raw returns hand-made maps."""
    t = model(8, seed)
    t.forward_raw = lambda imgs: [x.clone() for x in raw]
    return t


def test_kd_terms_scale_with_the_training_obj_and_cls_gains():
    """One head, 5 classes, 64 px input -> 8 x 8 grid x 3 anchors = 192 cells. The teacher differs
    from the student in one objectness logit and one class logit. Expected, from the YOLO
    loss's scaling: g_obj = obj x 64²/640² x 3 = 0.03 obj, g_cls = cls x 5/80 x 3 = 0.1875 cls,
    loss = g_obj x KL_obj / 192 + g_cls x KL_cls / (192 x 5)."""
    s = torch.zeros(1, 3, 8, 8, 10)
    t = s.clone()
    t[0, 0, 0, 0, 4] = 2.0
    t[0, 1, 2, 3, 7] = -2.0
    T = 2.0
    kl = kl_closed_form(0.0, 2.0, T)
    imgs = torch.zeros(1, 3, 64, 64)
    got = {}
    for obj, cls in [(1.0, 32.0), (2.0, 32.0), (1.0, 16.0)]:
        hook = make_distill_hook(model(4, 0), fixed_teacher([t]), DistillConfig("hinton", T),
                                 LossHyp(obj=obj, cls=cls))
        got[obj, cls] = hook.extra_loss(imgs, [s], torch.zeros(0, 6))[0].item()
        assert got[obj, cls] == pytest.approx(0.03 * obj * kl / 192 + 0.1875 * cls * kl / 960, rel=1e-6)
    obj_part = 0.03 * kl / 192  # the objectness term at obj gain 1
    assert got[2.0, 32.0] - got[1.0, 32.0] == pytest.approx(obj_part, rel=1e-5)
    # the engine hands its LossHyp over before training: that replaces the one given here
    hook = make_distill_hook(model(4, 0), fixed_teacher([t]), DistillConfig("hinton", T))
    hook.use_loss_hyp(LossHyp(obj=2.0, cls=32.0))
    assert hook.extra_loss(imgs, [s], torch.zeros(0, 6))[0].item() == got[2.0, 32.0]


def test_hook_runs_exactly_the_tested_loss_functions(monkeypatch):
    """The hook's loss is kd_weight x hinton_loss + box_weight x chen_box_loss, computed by those
    very functions (spied on), with the gains of the LossHyp it was given."""
    from yolo_slim.train.loss import loss_gains
    calls = {"hinton": 0, "chen": 0}
    real_hinton, real_chen = distill.hinton_loss, distill.chen_box_loss

    def spy_hinton(*a, **k):
        calls["hinton"] += 1
        return real_hinton(*a, **k)

    def spy_chen(*a, **k):
        calls["chen"] += 1
        return real_chen(*a, **k)
    monkeypatch.setattr(distill, "hinton_loss", spy_hinton)
    monkeypatch.setattr(distill, "chen_box_loss", spy_chen)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 8, 8, 10, generator=g), torch.randn(2, 3, 8, 8, 10, generator=g)
    targets = torch.tensor([[0, 1, 0.30, 0.40, 0.20, 0.25], [1, 3, 0.70, 0.55, 0.40, 0.30]])
    student, hyp = model(4, 0), LossHyp(obj=5.0, cls=7.0, anchor_t=3.0)
    cfg = DistillConfig("chen", temperature=3.0, kd_weight=0.6, box_weight=0.4, margin=0.1)
    hook = make_distill_hook(student, fixed_teacher([t]), cfg, hyp)
    loss, logs = hook.extra_loss(torch.zeros(2, 3, 64, 64), [s], targets)
    assert calls == {"hinton": 1, "chen": 1}
    _, g_obj, g_cls = loss_gains(hyp, (64, 64), 1, 5)
    kd = real_hinton([s], [t], 3.0, g_obj, g_cls)
    box, active = real_chen([s], [t], targets, student.heads, (64, 64), 3.0, 0.1)
    assert box.item() > 0 and kd.item() > 0
    assert torch.equal(loss, 0.6 * kd + 0.4 * box)
    assert logs == {"kd": float(0.6 * kd), "kd_box": float(0.4 * box), "kd_box_active": active}


def test_a_few_steps_lower_the_distillation_objective(shapes_data, tmp_path):
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    student, teacher = model(4, 0), model(8, 1)
    hook = make_distill_hook(student, teacher, DistillConfig("chen", margin=0.0))
    loader, _ = create_dataloader(parse_data_file(shapes_data).train, 64, 8, augment=False,
                                  workers=0, shuffle=False, verbose=False)
    imgs, targets, _, _ = next(iter(loader))

    def objective() -> tuple[float, float]:
        student.train()
        raw = student(imgs)
        with torch.no_grad():
            return (float(yolo_loss(raw, targets, student, (64, 64))[0]),
                    float(hook.extra_loss(imgs, raw, targets)[0]))

    before = objective()
    train(train_cfg(shapes_data, tmp_path, epochs=6, ema=False, fliplr=0.0, hsv_h=0, hsv_s=0,
                    hsv_v=0, scale=0.0, translate=0.0), student, [hook])
    after = objective()
    # measured: YOLO 13.67 -> 11.58, KD (KL + log-space box) 0.93 -> 0.26
    assert after[1] < 0.5 * before[1] and sum(after) < 0.9 * sum(before), (before, after)


def test_distill_script_end_to_end_and_mismatch_exit_code(shapes_data, tmp_path, run_script):
    student, teacher = model(4, 0), model(8, 1)
    s_pt, t_pt = str(tmp_path / "s.pt"), str(tmp_path / "t.pt")
    save_checkpoint(student, s_pt)
    save_checkpoint(teacher, t_pt)
    out = tmp_path / "run"
    rc, so, se = run_script("distill.py", "--weights", s_pt, "--t-weights", t_pt, "--data", shapes_data,
                            "--kd", "hinton", "--epochs", "1", "--img-size", "64", "--batch-size", "4",
                            "--workers", "0", "--device", "cpu", "--no-progress",
                            "--output-dir", str(out))
    assert rc == 0, se
    assert sorted(f for f in os.listdir(out) if f.endswith((".cfg", ".weights"))) == ["s.cfg", "s.weights"]
    bad = model(8, 1, classes=3)
    save_checkpoint(bad, t_pt)
    rc, so, se = run_script("distill.py", "--weights", s_pt, "--t-weights", t_pt, "--data", shapes_data,
                            "--epochs", "1", "--img-size", "64", "--device", "cpu",
                            "--output-dir", str(tmp_path / "run2"))
    assert rc == 2 and "heads do not match" in se and "Traceback" not in se


def test_distill_sparse_training_with_a_teacher(shapes_data, tmp_path):
    """distill.py -sr: prox sparse training to a FLOPs target with KD at the same time. The run
    logs both the KD terms and the sparsity columns, and its saved model holds the dead channels
    as exact (0, 0) pairs — the count results.csv reports."""
    import distill as distill_script
    from yolo_slim.nn.weights import model_from_checkpoint
    student, teacher = model(8, 0), model(8, 1)
    s_pt, t_pt = str(tmp_path / "s.pt"), str(tmp_path / "t.pt")
    save_checkpoint(student, s_pt)
    save_checkpoint(teacher, t_pt)
    out = tmp_path / "run"
    assert distill_script.main(["--weights", s_pt, "--t-weights", t_pt, "--data", shapes_data, "--kd", "chen",
                                "-sr", "--s", "0.05", "--sparsity-update", "prox", "--target-flops", "0.5",
                                "--epochs", "4", "--img-size", "64", "--batch-size", "4", "--workers", "0",
                                "--device", "cpu", "--no-progress", "--lr0", "0.02", "--warmup-epochs", "0",
                                "--output-dir", str(out)]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    assert float(last["kd"]) > 0 and float(last["flops_if_cut"]) <= 0.5 + 1e-6
    m = model_from_checkpoint(str(out / "last.pt"))
    dead = sum(int(((c.bn.weight == 0) & (c.bn.bias == 0)).sum()) for c in m.module_list
               if getattr(c, "bn", None) is not None)
    assert dead == int(last["dead"]) > 0
