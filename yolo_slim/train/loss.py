"""YOLO loss: target assignment over the anchors of every [yolo] head, GIoU box loss, BCE
objectness and class losses.

Normalisation (what makes a sparsity penalty's strength independent of batch size):
every term is a *mean* (box and class over assigned targets, objectness over grid cells), so
the loss is a per-image average and does not grow with the batch. The engine divides each
micro-batch's loss by the number of accumulation steps and DDP averages gradients over ranks,
so one optimizer step always sees the gradient of the mean loss over its nominal batch. A
hook that adds `s * sign(gamma)` after backward therefore has the same relative strength for
any batch size, accumulation or world size. The gains (box 3.2, obj 64, cls 32 before the
size/class/head scaling below) are yolov5's gains times its nominal batch of 64, i.e. the
same effective step at lr0 = 0.01 as the ultralytics tools whose `--s` values users know.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from yolo_slim.sections.yolo import decode_terms

WH_LOG_MAX = 6.0  # exp() of the raw w/h logit is clamped here: fp16 and early training cannot overflow


@dataclass
class LossHyp:
    box: float = 3.2
    obj: float = 64.0
    cls: float = 32.0
    anchor_t: float = 4.0      # a target matches every anchor whose w/h ratio is within this
    iou_obj: float = 1.0       # objectness target: (1 - iou_obj) + iou_obj * IoU(pred, target)
    label_smoothing: float = 0.0


def loss_gains(hyp: LossHyp, img_hw: tuple[int, int], nl: int, nc: int) -> tuple[float, float, float]:
    """(box, obj, cls) gains after scaling by head count, image size and class count; the one
    place this scaling lives, so the distillation terms weigh exactly like the YOLO terms."""
    g_box = hyp.box * 3 / nl
    g_obj = hyp.obj * (img_hw[0] * img_hw[1]) / 640 ** 2 * 3 / nl
    g_cls = hyp.cls * nc / 80 * 3 / nl
    return g_box, g_obj, g_cls


def bbox_giou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalised IoU of two sets of [n, 4] (cx, cy, w, h) boxes, elementwise."""
    a1, a2 = b1[:, :2] - b1[:, 2:] / 2, b1[:, :2] + b1[:, 2:] / 2
    c1, c2 = b2[:, :2] - b2[:, 2:] / 2, b2[:, :2] + b2[:, 2:] / 2
    inter = (torch.min(a2, c2) - torch.max(a1, c1)).clamp(min=0).prod(1)
    union = b1[:, 2:].prod(1) + b2[:, 2:].prod(1) - inter + eps
    iou = inter / union
    hull = (torch.max(a2, c2) - torch.min(a1, c1)).prod(1) + eps
    return iou - (hull - union) / hull


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """[n, m] IoU of boxes sharing a centre, from their widths and heights."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter)


def decode_box(p: torch.Tensor, anchors: torch.Tensor, head) -> torch.Tensor:
    """Predicted (x offset in cell, y offset, w, h) in grid units: the [yolo] decode
    (sections/yolo.py `decode_terms`) with the w/h exponent clamped."""
    xy, wh, _ = decode_terms(p[:, :4], anchors, head.scale_x_y, head.new_coords, WH_LOG_MAX)
    return torch.cat([xy, wh], 1)


def build_targets(raw: list[torch.Tensor], targets: torch.Tensor, heads, img_hw: tuple[int, int],
                  anchor_t: float) -> list[tuple]:
    """For each head: (b, a, gj, gi, tbox (grid units, offset in cell), anchors (grid units),
    cls). A target goes to every anchor (any head) whose w/h ratio is within anchor_t, and
    always to its best-IoU anchor overall, in the cell holding its centre."""
    H, W = img_hw
    wh_px = targets[:, 4:6] * targets.new_tensor([W, H])
    all_anchors = torch.cat([h.anchors for h in heads]).to(targets)
    best = wh_iou(wh_px, all_anchors).argmax(1) if len(targets) else targets.new_zeros(0).long()
    out, first = [], 0
    for h, p in zip(heads, raw):
        ny, nx = p.shape[2:4]
        gain = targets.new_tensor([nx / W, ny / H])
        anchors = h.anchors.to(targets) * gain  # grid units
        r = wh_px[:, None] / h.anchors.to(targets)[None]  # [nt, na, 2]
        match = torch.max(r, 1 / r).max(2).values < anchor_t
        match |= (best[:, None] - first) == torch.arange(h.na, device=targets.device)[None]
        first += h.na
        t_idx, a = match.nonzero(as_tuple=True)
        t = targets[t_idx]
        gxy = t[:, 2:4] * targets.new_tensor([nx, ny])
        gwh = t[:, 4:6] * targets.new_tensor([nx, ny])
        gij = gxy.long()
        gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        tbox = torch.cat([gxy - torch.stack([gi, gj], 1), gwh], 1)
        out.append((t[:, 0].long(), a, gj, gi, tbox, anchors[a], t[:, 1].long()))
    return out


def yolo_loss(raw: list[torch.Tensor], targets: torch.Tensor, model, img_hw: tuple[int, int],
              hyp: LossHyp | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """raw: the model's train-mode outputs for an input of img_hw (h, w) pixels; targets [N, 6]
    (img, cls, cx, cy, w, h) normalised.
    Returns (loss scalar, detached [box, obj, cls, total]). See the module doc for scaling."""
    hyp = hyp or LossHyp()
    heads = getattr(model, "module", model).heads
    nl, nc = len(heads), heads[0].nc
    dev = raw[0].device
    targets = targets.to(dev).float()
    cp, cn = 1.0 - 0.5 * hyp.label_smoothing, 0.5 * hyp.label_smoothing
    # darknet scales obj by score x cls, so the class logit is trained even when nc == 1
    g_box, g_obj, g_cls = loss_gains(hyp, img_hw, nl, nc)
    lbox, lcls, lobj = (torch.zeros((), device=dev) for _ in range(3))
    total_cells = sum(p[..., 0].numel() for p in raw)
    for h, p, (b, a, gj, gi, tbox, anc, tcls) in zip(
            heads, raw, build_targets(raw, targets, heads, img_hw, hyp.anchor_t)):
        p = p.float()  # the loss in fp32 whatever the autocast dtype
        logits = p[..., 4]
        tobj = torch.zeros_like(logits)
        if len(b):
            ps = p[b, a, gj, gi]
            giou = bbox_giou(decode_box(ps, anc, h), tbox)
            lbox = lbox + (1 - giou).mean()
            tobj[b, a, gj, gi] = (1 - hyp.iou_obj) + hyp.iou_obj * giou.detach().clamp(0)
            t = torch.full_like(ps[:, 5:], cn)
            t[torch.arange(len(b), device=dev), tcls] = cp
            lcls = lcls + _bce(ps[:, 5:], t, h.new_coords).mean()
        # per-cell mean over all heads' cells: each cell weighs the same whatever its stride
        lobj = lobj + _bce(logits, tobj, h.new_coords).sum() / total_cells * nl
    lbox, lobj, lcls = lbox * g_box, lobj * g_obj, lcls * g_cls
    loss = lbox + lobj + lcls
    return loss, torch.stack([lbox, lobj, lcls, loss]).detach()


def _bce(x: torch.Tensor, t: torch.Tensor, probs: bool) -> torch.Tensor:
    if probs:  # new_coords heads output probabilities already
        return F.binary_cross_entropy(x.clamp(1e-7, 1 - 1e-7), t, reduction="none")
    return F.binary_cross_entropy_with_logits(x, t, reduction="none")
