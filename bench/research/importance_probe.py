#!/usr/bin/env python3
"""Which channels of a *pretrained* model can go? Zero the least important share of its BN
channels by two criteria, no training, and score agreement with the untouched model on the
held-out video frames (the original's detections with score >= 0.25 as the truth).

  .venv/bin/python bench/research/importance_probe.py [--shares 0.06 0.12 0.2 0.3] [--batches 10]

Criteria: |γ| (network slimming; the older tools' ranking and the prox norm), β kept (the
channel then outputs act(β)) or zeroed; and the summed squared first-order Taylor term
(γ ∂L/∂γ + β ∂L/∂β)² over `--batches` training batches of the YOLO loss on the original's own
labels (train.prox.ChannelClasses.taylor), pair zeroed. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from yolo_slim.data.dataset import create_dataloader  # noqa: E402
from yolo_slim.data.real_assets import real_asset  # noqa: E402
from yolo_slim.eval.evaluate import evaluate, validation_loader  # noqa: E402
from yolo_slim.nn.weights import load_model  # noqa: E402
from yolo_slim.train.loss import LossHyp, yolo_loss  # noqa: E402
from yolo_slim.train.prox import ChannelClasses  # noqa: E402
from yolo_slim.train.teacher import TeacherRunner  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shares", type=float, nargs="+", default=[0.06, 0.12, 0.2, 0.3])
    p.add_argument("--batches", type=int, default=10)
    a = p.parse_args()
    coco, vt = real_asset("coco-tiny"), real_asset("vtest")
    ref = load_model(os.path.join(coco, "yolov3-tiny.cfg"), os.path.join(coco, "yolov3-tiny.weights")).eval()
    val = list(validation_loader(os.path.join(vt, "vtest.data"), 416, 16)[0])
    cl = ChannelClasses(ref, "normal", (416, 416))

    def agreement(kill: torch.Tensor, with_beta: bool) -> str:
        m = copy.deepcopy(ref)
        c = ChannelClasses(m, "normal", (416, 416))
        c.with_beta = with_beta
        c.scale((~kill).float())
        r = evaluate(m, val, progress=False, reference=ref)
        return f"{r['map50']:.3f} / {r['map']:.3f} ({cl.flops_if_cut(kill):.0%} FLOPs)"

    gamma = torch.zeros(cl.n)
    for bn, sel, cls in zip(cl.bns, cl.sel, cl.cls):
        gamma.index_add_(0, cls, bn.weight[sel].detach().abs().float())
    # Taylor scores: the YOLO loss on the original's own detections, BN statistics frozen
    m = copy.deepcopy(ref).train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    teacher, cm = TeacherRunner(copy.deepcopy(ref)), ChannelClasses(m, "normal", (416, 416))
    loader, _ = create_dataloader(os.path.join(vt, "train.txt"), 416, 8, augment=False, workers=0, verbose=False)
    taylor = torch.zeros(cl.n)
    for i, (imgs, *_) in enumerate(loader):
        if i >= a.batches:
            break
        m.zero_grad()
        loss, _ = yolo_loss(m(imgs), teacher.targets(imgs, 0.25), m, (416, 416), LossHyp(anchor_t=1.0, iou_obj=0.0))
        loss.backward()
        taylor += cm.taylor()
    rows = ["| share of channels zeroed | by |γ|, β kept | by |γ|, (γ, β) zeroed | by Taylor, (γ, β) zeroed |",
            "| --- | --- | --- | --- |"]
    for share in a.shares:
        k = int(share * cl.n)
        cells = []
        for score, with_beta in ((gamma, False), (gamma, True), (taylor, True)):
            kill = torch.zeros(cl.n, dtype=torch.bool)
            kill[torch.argsort(score)[:k]] = True
            cells.append(agreement(kill, with_beta))
        rows.append(f"| {share:.0%} ({k}) | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print("\nagreement@0.5 / @0.5:0.95 with the original, held-out frames; no training\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
