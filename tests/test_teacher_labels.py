"""Label-free training (--labels teacher) and agreement scoring (evaluate --reference).

The teacher of these tests is made by hand: its last conv outputs only its bias, so it "sees"
one fixed object (class 2 in one cell and anchor) in every image whatever the pixels. A student
that learns from its labels must learn to predict exactly that box."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.eval.evaluate import evaluate, non_max_suppression
from yolo_slim.nn.model import Darknet, conv_layers
from yolo_slim.nn.weights import save_checkpoint
from yolo_slim.train.engine import TrainConfig, TrainHooks, train
from yolo_slim.train.teacher import TEACHER_NMS_IOU, TeacherLabelHook, TeacherRunner, detections_to_targets

CFG = ("[net]\nwidth=64\nheight=64\n"
       "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
       "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
       "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
       "[convolutional]\nsize=1\nstride=1\nfilters=30\nactivation=linear\n"
       "[yolo]\nmask=0,1,2\nanchors=8,8, 16,16, 32,32\nclasses=5\nnum=3\n")


def student(seed: int = 0) -> Darknet:
    torch.manual_seed(seed)
    return Darknet(parse_cfg_text(CFG))


def fixed_teacher() -> Darknet:
    """Sees one object in every image: anchor 1 (16x16 px) at cell (row 3, col 4) of the 8x8
    grid, class 2, score sigmoid(4)^2 = 0.965; everything else scores < 0.001."""
    m = student(1)
    _, head_conv = conv_layers(m)[-1]
    conv = head_conv.conv
    with torch.no_grad():
        conv.weight.zero_()
        bias = torch.full((3, 10), -8.0)
        bias[:, :4] = 0.0
        conv.bias.copy_(bias.flatten())
    # one cell only: a bias cannot tell cells apart, so the cell comes from a hook on the map
    head = m.heads[0]
    orig = head.forward

    def forward(x, outputs=None):
        p = orig(x, outputs).clone()
        p[:, 1, 3, 4, 4] = 4.0   # objectness logit of anchor 1 at (3, 4)
        p[:, 1, 3, 4, 7] = 4.0   # class 2 logit
        return p
    head.forward = forward
    return m.eval()


def test_detections_to_targets_normalises_and_clips():
    dets = [torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.9, 2.0],
                          [-8.0, 40.0, 8.0, 72.0, 0.5, 1.0]]),  # hangs over the left/bottom edge
            torch.zeros((0, 6)),
            torch.tensor([[60.0, 0.0, 64.0, 4.0, 0.3, 4.0]])]
    t = detections_to_targets(dets, (64, 64))
    expect = torch.tensor([[0, 2, 20 / 64, 40 / 64, 20 / 64, 40 / 64],
                           [0, 1, 4 / 64, 52 / 64, 8 / 64, 24 / 64],  # clipped to x 0..8, y 40..64
                           [2, 4, 62 / 64, 2 / 64, 4 / 64, 4 / 64]])
    assert torch.allclose(t, expect, atol=1e-7)
    assert detections_to_targets([torch.zeros((0, 6))], (64, 64)).shape == (0, 6)


def test_the_fixed_teacher_sees_one_box():
    runner = TeacherRunner(fixed_teacher())
    t = runner.targets(torch.rand(3, 3, 64, 64), 0.25)
    # anchor 16x16 px centred at cell (3, 4) + sigmoid(0) = 0.5 of a cell of 8 px: (36, 28)
    assert t.shape == (3, 6)
    assert torch.allclose(t, torch.tensor([[k, 2, 36 / 64, 28 / 64, 16 / 64, 16 / 64] for k in range(3)]))


class Spy(TrainHooks):
    """Records what the loss saw: the batch and its targets after relabelling."""

    def __init__(self):
        self.seen = []

    def extra_loss(self, imgs, raw, targets):
        self.seen.append((imgs.detach().clone(), targets.detach().clone()))
        return None


def unlabeled_copy(shapes_data: str, dest) -> str:
    """The shapes set's images without their label files (a folder not named images/)."""
    src = os.path.dirname(shapes_data)
    lists = {}
    for split in ("train", "valid"):
        paths = []
        with open(os.path.join(src, f"{split}.txt")) as f:
            for line in f:
                p = os.path.join(src, line.strip())
                q = os.path.join(dest, "frames", split, os.path.basename(p))
                os.makedirs(os.path.dirname(q), exist_ok=True)
                shutil.copy(p, q)
                paths.append(q)
        lists[split] = os.path.join(dest, f"{split}.txt")
        with open(lists[split], "w") as f:
            f.write("\n".join(paths) + "\n")
    data = os.path.join(dest, "u.data")
    with open(data, "w") as f:
        f.write(f"classes=5\ntrain={lists['train']}\nvalid={lists['valid']}\n")
    return data


def cfg_for(data: str, out, **kw) -> TrainConfig:
    base = dict(data=data, output_dir=str(out), img_size=64, batch_size=4, nominal_batch=4, epochs=1,
                workers=0, device="cpu", progress=False, warmup_epochs=0.0, ema=False, lr0=0.01,
                amp=False)
    return TrainConfig(**{**base, **kw})


def test_targets_are_the_teachers_nms_output_on_the_augmented_batch(shapes_data, tmp_path):
    """With a real (random) teacher: every batch's targets equal the teacher's NMS output on
    that very (augmented, mosaic) batch."""
    teacher = lively_teacher()
    runner, spy = TeacherRunner(teacher), Spy()
    hooks = [TeacherLabelHook(runner, 0.3), spy]
    train(cfg_for(unlabeled_copy(shapes_data, tmp_path), tmp_path / "r", labels="teacher", mosaic=1.0,
                  lr0=1e-9), student(0), hooks)
    assert len(spy.seen) == 2  # 8 images, batch 4
    n = 0
    for imgs, targets in spy.seen:
        with torch.no_grad():
            pred = teacher.eval()(imgs)
        dets = non_max_suppression(pred, 0.3 - 1e-9, TEACHER_NMS_IOU)
        expect = detections_to_targets(dets, (64, 64))
        assert torch.allclose(targets, expect, atol=1e-6)
        n += len(targets)
    assert n > 0


def lively_teacher(seed: int = 7) -> Darknet:
    """A random model whose objectness is lifted so that some of its boxes pass 0.3."""
    m = student(seed)
    with torch.no_grad():
        conv_layers(m)[-1][1].conv.bias.view(3, 10)[:, 4] += 1.0
    return m.eval()


def calibrated(m: Darknet, data: str) -> Darknet:
    """BN running statistics set to the data's (as a trained model's are): otherwise training
    alone would move the student away from the teacher, labels or not."""
    from yolo_slim.eval.evaluate import validation_loader
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    m.train()
    with torch.no_grad():
        for imgs, *_ in validation_loader(data, 64, 4)[0]:
            m.forward_raw(imgs)
    for bn in bns:
        bn.momentum = 0.03
    return m.eval()


def test_a_label_free_run_learns_back_the_teachers_boxes(shapes_data, tmp_path):
    """The student is the teacher with its box sizes broken (w, h logits + 1: every box e times
    too big, agreement@0.5 near 0); training on the teacher's labels alone, without a single
    label file, must bring its boxes back."""
    import copy
    from yolo_slim.eval.evaluate import validation_loader
    data = unlabeled_copy(shapes_data, tmp_path)
    teacher = calibrated(lively_teacher(), data)
    s = copy.deepcopy(teacher)
    with torch.no_grad():
        conv_layers(s)[-1][1].conv.bias.view(3, 10)[:, 2:4] += 1.0
    loader, _ = validation_loader(data, 64, 4)
    before = evaluate(s, loader, progress=False, reference=teacher, reference_conf=0.3)
    summary = train(cfg_for(data, tmp_path / "r", labels="teacher", teacher_conf=0.3, epochs=20, lr0=0.05),
                    s.train(), [TeacherLabelHook(TeacherRunner(teacher), 0.3)])
    after = evaluate(s, loader, progress=False, reference=teacher, reference_conf=0.3)
    wh_bias = [conv_layers(m)[-1][1].conv.bias.view(3, 10)[:, 2:4].detach() for m in (s, teacher)]
    gap = float((wh_bias[0] - wh_bias[1]).mean())
    assert before["n_labels"] == after["n_labels"] > 4
    # measured: the w/h bias gap 1.0 -> 0.3, agreement@0.5 0.08 -> 0.20 (a random teacher's
    # boxes score near the threshold, and every layer trains: agreement moves less than the bias)
    assert gap < 0.45, gap
    assert before["map50"] < 0.1 and after["map50"] > before["map50"] + 0.08, (before["map50"], after["map50"])
    row = summary["results"][-1]
    assert "agree50" in row and "map50" not in row  # agreement is named as such
    assert row["agree50"] == pytest.approx(after["map50"], abs=0.05)  # the EMA is off
    assert row["teacher_boxes_per_img"] > 1


def test_agreement_of_a_model_with_itself_is_one(shapes_data):
    from yolo_slim.eval.evaluate import validation_loader
    m = student(3)
    with torch.no_grad():
        conv_layers(m)[-1][1].conv.bias.view(3, 10)[:, 4] += 1.5
    loader, _ = validation_loader(shapes_data, 64, 4)
    r = evaluate(m, loader, progress=False, reference=m, reference_conf=0.25)
    assert r["n_labels"] > 10 and r["scored_against"] == "reference"
    assert r["map50"] == pytest.approx(1.0, abs=1e-12) and r["map"] == pytest.approx(1.0, abs=1e-12)
    other = evaluate(student(4), loader, progress=False, reference=m, reference_conf=0.25)
    assert other["map50"] < 0.5


def test_label_free_set_is_refused_without_the_flag(shapes_data, tmp_path, run_script):
    data = unlabeled_copy(shapes_data, tmp_path)
    w = str(tmp_path / "m.pt")
    save_checkpoint(student(0), w)
    common = ["--weights", w, "--data", data, "--epochs", "1", "--img-size", "64", "--batch-size", "4",
              "--workers", "0", "--device", "cpu", "--no-progress"]
    rc, so, se = run_script("train_sparse.py", *common, "--output-dir", str(tmp_path / "a"))
    assert rc == 2 and "Traceback" not in se
    assert se.strip().count("\n") == 0 and "none of its 8 images has a label file" in se
    assert "--labels teacher" in se
    # the same run label-free trains, and reports agreement
    rc, so, se = run_script("train_sparse.py", *common, "--labels", "teacher", "--output-dir", str(tmp_path / "b"))
    assert rc == 0, se
    assert "agreement@0.5=" in so
    # distill.py with --labels teacher and no teacher is one line too
    rc, so, se = run_script("distill.py", *common, "--kd", "none", "--labels", "teacher",
                            "--output-dir", str(tmp_path / "c"))
    assert rc == 2 and "needs a teacher" in se and "Traceback" not in se


def test_evaluate_reference_cli(shapes_data, tmp_path, run_script):
    import json
    w = str(tmp_path / "m.pt")
    m = student(3)
    with torch.no_grad():
        conv_layers(m)[-1][1].conv.bias.view(3, 10)[:, 4] += 1.5
    save_checkpoint(m, w)
    data = unlabeled_copy(shapes_data, tmp_path)
    rc, so, se = run_script("evaluate.py", "--weights", w, "--reference", w, "--data", data, "--img-size", "64",
                            "--output-dir", str(tmp_path / "e"))
    assert rc == 0, se
    assert "AGREEMENT with" in so and "agr50" in so
    got = json.load(open(tmp_path / "e" / "metrics.json"))
    assert got["scored_against"] == "reference" and got["map50"] == pytest.approx(1.0)
    assert np.isclose(got["map"], 1.0)
