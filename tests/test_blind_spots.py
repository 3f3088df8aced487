"""Tests for two places a wrong implementation used to pass the suite: gradient accumulation in
the engine (the loss must be divided by the number of micro-batches) and the `shortcut` pruning
strategy (a shortcut group's FIRST conv decides its mask, not the followers)."""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from yolo_slim.analysis.graph import shortcut_groups
from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet, conv_layers
from yolo_slim.prune.channels import PruneOptions, prune_model
from yolo_slim.prune.masks import kept_channels
from yolo_slim.train.engine import TrainConfig, TrainHooks, train
from yolo_slim.train.loss import LossHyp

from cfgs import conv_section, shortcut_section, tiny_detector_cfg

# ---- gradient accumulation ----------------------------------------------------------------------

# no BatchNorm: with BN a batch of 4 and two batches of 2 normalise by different statistics, so
# their gradients would differ for a reason that has nothing to do with accumulation
NO_BN = tiny_detector_cfg(conv_section(8, 3, 2, bn=False), conv_section(16, 3, 2, bn=False),
                          conv_section(16, 3, 2, bn=False))


def same_box_dataset(root: str) -> str:
    """4 images of 64 px, each with one 16 x 24 px box (class k) at a different place. Equal box
    sizes give every image the same number of anchor assignments, so the loss's means over
    assigned targets (box, class) and over cells (objectness) are both per-image averages:
    the mean over 4 images equals the mean of the means over two halves of 2."""
    lines = []
    for k, (x, y) in enumerate([(4, 6), (30, 20), (12, 36), (40, 8)]):
        img = np.zeros((64, 64, 3), np.uint8)
        img[y:y + 24, x:x + 16] = (60 * k + 40, 200, 255 - 50 * k)
        path = os.path.join(root, "images", f"{k}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, img)
        lab = os.path.join(root, "labels", f"{k}.txt")
        os.makedirs(os.path.dirname(lab), exist_ok=True)
        with open(lab, "w") as f:
            f.write(f"{k} {(x + 8) / 64} {(y + 12) / 64} {16 / 64} {24 / 64}\n")
        lines.append(path)
    with open(os.path.join(root, "list.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    data = os.path.join(root, "d.data")
    with open(data, "w") as f:
        f.write("classes=5\ntrain=list.txt\nvalid=list.txt\n")
    return data


class FirstStepGrads(TrainHooks):
    """The gradients the first optimizer step sees (after_backward runs before step()), and the
    LossHyp the engine hands over."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None
        self.hyp: LossHyp | None = None

    def use_loss_hyp(self, hyp: LossHyp) -> None:
        self.hyp = hyp

    def after_backward(self, model, step):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def first_step_grads(data: str, out, batch_size: int) -> FirstStepGrads:
    torch.manual_seed(0)
    model = Darknet(parse_cfg_text(NO_BN))
    rec = FirstStepGrads()
    cfg = TrainConfig(data=data, output_dir=str(out), img_size=64, batch_size=batch_size,
                      nominal_batch=4, epochs=1, workers=0, device="cpu", progress=False,
                      warmup_epochs=0.0, ema=False, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0,
                      scale=0, translate=0, mosaic=0, obj=48.0,
                      amp=False)  # fp32: bf16 autocast (CPUs with AMX) rounds at 4e-3
    train(cfg, model, [rec])
    return rec


def test_accumulated_micro_batches_give_the_full_batch_gradient(tmp_path):
    """One step over a batch of 4 (nominal 4, accumulate 1) and one step over two micro-batches
    of 2 (nominal 4, accumulate 2) see the same data, so the same gradient: each micro-batch
    loss is divided by 2 before backward. Without that division the second run's gradient is
    exactly twice the first."""
    data = same_box_dataset(str(tmp_path / "data"))
    full = first_step_grads(data, tmp_path / "b4", 4)
    acc = first_step_grads(data, tmp_path / "b2x2", 2)
    assert full.grads.keys() == acc.grads.keys() and len(full.grads) == 8  # 4 convs x (w, b)
    scale = max(float(g.abs().max()) for g in full.grads.values())
    assert scale > 1e-3  # a real gradient, not zeros that would match anything
    worst = max(float((full.grads[n] - acc.grads[n]).abs().max()) for n in full.grads)
    assert worst <= 1e-5 * scale, (worst, scale)
    # the engine handed its LossHyp (with the config's obj gain) to the hooks
    assert full.hyp == LossHyp(obj=48.0)


# ---- the shortcut strategy: the first conv of a group decides -----------------------------------

# 0 conv 8 s2, 1 conv 16 s2, [2 conv 8 1x1, 3 conv 16, 4 shortcut], [5 conv 8 1x1, 6 conv 16,
# 7 shortcut], 8 conv 16 s2, 9 head, 10 yolo: convs 1, 3 and 6 are summed -> one group, first 1
TWO_RESIDUALS = tiny_detector_cfg(
    conv_section(8, 3, 2), conv_section(16, 3, 2),
    conv_section(8, 1, 1), conv_section(16, 3, 1), shortcut_section(-3),
    conv_section(8, 1, 1), conv_section(16, 3, 1), shortcut_section(-3),
    conv_section(16, 3, 2))


def model_with_gammas(high: dict[int, range]) -> Darknet:
    """|γ| = 1 everywhere except in the convs of `high`, whose channels are 1.0 inside the given
    range and 0.01 outside."""
    torch.manual_seed(0)
    m = Darknet(parse_cfg_text(TWO_RESIDUALS))
    with torch.no_grad():
        for i, c in conv_layers(m):
            if c.bn is None:
                continue
            g = torch.ones_like(c.bn.weight)
            if i in high:
                g.fill_(0.01)
                g[list(high[i])] = 1.0
            c.bn.weight.copy_(g)
    return m


def test_shortcut_strategy_lets_the_first_conv_of_a_group_decide():
    """In the group {1, 3, 6} the three convs want different channels: conv 1 (the first) keeps
    0..5, conv 3 keeps 4..11, conv 6 keeps 10..15. At threshold 0.5 the shortcut strategy keeps
    exactly 0..5 in all three; followers deciding would give 4..11, 10..15 or a union of them.
    Changing which channels conv 1 favours moves the kept channels with it. For contrast, slim
    keeps the union of the members' channels and normal never touches the group."""
    m = model_with_gammas({1: range(0, 6), 3: range(4, 12), 6: range(10, 16)})
    assert shortcut_groups(m.module_defs) == [[1, 3, 6]]
    kept = kept_channels_of(m, "shortcut")
    whole8, whole16 = list(range(8)), list(range(16))
    assert kept == {0: whole8, 1: [0, 1, 2, 3, 4, 5], 2: whole8, 3: [0, 1, 2, 3, 4, 5], 5: whole8,
                    6: [0, 1, 2, 3, 4, 5], 8: whole16, 9: list(range(30))}
    m = model_with_gammas({1: range(9, 16), 3: range(4, 12), 6: range(0, 3)})
    kept = kept_channels_of(m, "shortcut")
    assert kept[1] == kept[3] == kept[6] == list(range(9, 16))
    assert kept_channels_of(m, "slim")[1] == [0, 1, 2] + list(range(4, 16))  # union of members
    assert kept_channels_of(m, "normal")[1] == whole16


def kept_channels_of(m: Darknet, strategy: str) -> dict[int, list[int]]:
    r = prune_model(m, PruneOptions(strategy=strategy, threshold=0.5))
    assert r.report["verification"]["rel_vs_folded"] <= 1e-5  # the compact model is exact
    return kept_channels(r.graph, r.keep_node)
