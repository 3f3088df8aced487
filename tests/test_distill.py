"""Distillation through the engine: frozen teacher, gradients only in the student, the loss
falls over a few steps, chen logs its active-anchor fraction, mismatched heads are refused."""
from __future__ import annotations

import csv
import os

import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.train.distill import DistillConfig, make_distill_hook
from yolo_slim.train.engine import TrainConfig, train
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.train.loss import yolo_loss
from yolo_slim.nn.model import Darknet
from yolo_slim.darknet.weights import save_checkpoint


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
    train(train_cfg(shapes_data, tmp_path, ema=False), student, [hook])
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


def test_a_few_steps_lower_the_distillation_objective(shapes_data, tmp_path):
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    student, teacher = model(4, 0), model(8, 1)
    hook = make_distill_hook(student, teacher, DistillConfig("chen", margin=0.0))
    loader, _ = create_dataloader(parse_data_file(shapes_data).train, 64, 8, augment=False,
                                  workers=0, shuffle=False, verbose=False)
    imgs, targets, _, _ = next(iter(loader))

    def objective() -> float:
        student.train()
        raw = student(imgs)
        with torch.no_grad():
            loss = yolo_loss(raw, targets, student, (64, 64))[0] + hook.extra_loss(imgs, raw, targets)[0]
        return float(loss)

    before = objective()
    train(train_cfg(shapes_data, tmp_path, epochs=6, ema=False, fliplr=0.0, hsv_h=0, hsv_s=0,
                    hsv_v=0, scale=0.0, translate=0.0), student, [hook])
    after = objective()
    assert after < 0.8 * before, (before, after)


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
