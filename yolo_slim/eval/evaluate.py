"""Inference, NMS and COCO-style mAP.

AP follows pycocotools' COCOeval for boxes (its tests compare to 1e-3): per class, detections
sorted by score are matched greedily to the unmatched ground truth of highest IoU >= t, the
precision envelope is sampled at 101 recall points, and a class without ground truth gets no
AP (it is left out of the mean, as COCO does; a class with ground truth but no detections
gets 0). mAP@0.5:0.95 averages the 10 IoU thresholds .50:.05:.95. Two deliberate differences:
no per-image-per-class cap of 100 detections (NMS's max_det caps per image) and no area ranges.

Precision and recall are reported at one confidence threshold for all classes, the one that
maximises the mean F1 over classes at IoU 0.5 (the YOLOv5 convention): the operating point a
user would deploy, rather than a different threshold per class.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1)  # as COCOeval
REC_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1)


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    xy, half = x[..., :2], x[..., 2:4] / 2
    return torch.cat([xy - half, xy + half], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [len(a), len(b)] of xyxy boxes (no +1 pixel offset, as pycocotools)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def nms_indices(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_thres: float, max_keep: int | None = None, block: int = 512) -> torch.Tensor:
    """Exact greedy per-class NMS, vectorised: indices of kept boxes, highest score first.

    Boxes of different classes never suppress each other; we mask the IoU matrix by class
    equality instead of the usual coordinate offset per class, which loses float32 precision
    when offsets reach ~1e5. Sorted boxes go in blocks: a block is first cleared against the
    boxes already kept, then solved inside by a fixed-point iteration
    keep[j] = not any(keep[i] and S[i, j] for i < j), whose unique fixed point is the greedy
    answer (after t rounds the first t entries are final; it usually stops after a few).
    Once max_keep boxes are kept the rest cannot make it, so we stop there.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    kept: list[torch.Tensor] = []
    kept_boxes, kept_cls = boxes[:0], classes[:0]
    n_kept = 0
    for s in range(0, len(order), block):
        idx = order[s:s + block]
        b, c = boxes[idx], classes[idx]
        if n_kept:
            hit = (box_iou(b, kept_boxes) > iou_thres) & (c[:, None] == kept_cls[None, :])
            alive = ~hit.any(1)
            idx, b, c = idx[alive], b[alive], c[alive]
        if len(idx) == 0:
            continue
        sup = (box_iou(b, b) > iou_thres) & (c[:, None] == c[None, :])
        sup = torch.triu(sup, diagonal=1)  # only a higher-scored box suppresses
        keep = torch.ones(len(idx), dtype=torch.bool, device=boxes.device)
        while True:
            new = ~(sup & keep[:, None]).any(0)
            if torch.equal(new, keep):
                break
            keep = new
        idx, b, c = idx[keep], b[keep], c[keep]
        kept.append(idx)
        kept_boxes, kept_cls = torch.cat([kept_boxes, b]), torch.cat([kept_cls, c])
        n_kept += len(idx)
        if max_keep is not None and n_kept >= max_keep:
            break
    out = torch.cat(kept) if kept else order[:0]
    return out[:max_keep] if max_keep is not None else out


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.001, iou_thres: float = 0.6,
                        max_det: int = 300, multi_label: bool = False) -> list[torch.Tensor]:
    """Decoded predictions [B, N, 5+nc] (x, y, w, h, obj, classes) -> per image [n, 6]
    (x1, y1, x2, y2, score, cls) with score = obj * cls, best first. With multi_label a box
    appears once per class whose score passes conf_thres (better recall for mAP)."""
    out = []
    for p in pred:
        p = p[p[:, 4] > conf_thres]  # objectness bounds every class score: a cheap prefilter
        scores = p[:, 5:] * p[:, 4:5]
        boxes = xywh2xyxy(p[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            boxes, conf, cls = boxes[i], scores[i, j], j
        else:
            conf, cls = scores.max(1)
            ok = conf > conf_thres
            boxes, conf, cls = boxes[ok], conf[ok], cls[ok]
        keep = nms_indices(boxes, conf, cls, iou_thres, max_det)
        out.append(torch.cat([boxes[keep], conf[keep, None], cls[keep, None].to(boxes.dtype)], 1))
    return out


def match_image(dets: np.ndarray, gts: np.ndarray, iouv: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """COCO matching in one image. dets [n, 6] xyxy score cls; gts [m, 5] cls xyxy.
    Returns tp [n, len(iouv)] bool: detection k is a true positive at threshold t."""
    tp = np.zeros((len(dets), len(iouv)), bool)
    if not len(dets) or not len(gts):
        return tp
    iou = box_iou(torch.as_tensor(dets[:, :4], dtype=torch.float64),
                  torch.as_tensor(gts[:, 1:5], dtype=torch.float64)).numpy()
    for c in np.unique(dets[:, 5]):
        di = np.nonzero(dets[:, 5] == c)[0]
        gi = np.nonzero(gts[:, 0] == c)[0]
        if not len(gi):
            continue
        di = di[np.argsort(-dets[di, 4], kind="mergesort")]
        matched = np.zeros((len(iouv), len(gi)), bool)
        for d in di:
            row = iou[d, gi]
            cand = np.where(~matched & (row[None, :] >= iouv[:, None]), row[None, :], -1.0)
            best = cand.argmax(1)
            ok = cand[np.arange(len(iouv)), best] >= 0
            matched[np.nonzero(ok)[0], best[ok]] = True
            tp[d] = ok
    return tp


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, n_gt: Sequence[int],
                 ) -> dict[str, np.ndarray]:
    """COCO 101-point AP per class and IoU threshold, plus P/R at the max-mean-F1 confidence.

    tp [n, T], conf [n], pred_cls [n] over all images; n_gt[c] ground-truth count of class c.
    Returns ap [nc, T] (nan where a class has no ground truth), precision [nc], recall [nc],
    conf_thres (the chosen confidence)."""
    nc, nt = len(n_gt), tp.shape[1]
    ap = np.full((nc, nt), np.nan)
    grid = np.linspace(0, 1, 1001)
    p_grid, r_grid = np.zeros((nc, len(grid))), np.zeros((nc, len(grid)))
    for c in range(nc):
        k = np.nonzero(pred_cls == c)[0]
        k = k[np.argsort(-conf[k], kind="mergesort")]
        if n_gt[c] == 0:
            continue
        tpc = np.cumsum(tp[k], 0, dtype=np.float64)
        fpc = np.cumsum(~tp[k], 0, dtype=np.float64)
        rc = tpc / n_gt[c]
        pr = tpc / np.maximum(tpc + fpc, np.spacing(1))
        for t in range(nt):
            env = np.maximum.accumulate(pr[::-1, t])[::-1]  # precision envelope
            q = np.zeros(len(REC_THRESHOLDS))
            ri = np.searchsorted(rc[:, t], REC_THRESHOLDS, side="left")
            ok = ri < len(env)
            q[ok] = env[ri[ok]]
            ap[c, t] = q.mean()
        # detections with score >= g, for every grid confidence g (scores sorted descending)
        n_at = np.searchsorted(-conf[k], -grid, side="right")
        tp_at = np.concatenate([[0.0], tpc[:, 0]])[n_at]
        p_grid[c] = np.where(n_at > 0, tp_at / np.maximum(n_at, 1), 0.0)
        r_grid[c] = tp_at / n_gt[c]
    has_gt = np.asarray(n_gt) > 0
    f1 = 2 * p_grid * r_grid / np.maximum(p_grid + r_grid, 1e-16)
    best = int(f1[has_gt].mean(0).argmax()) if has_gt.any() else 0
    return {"ap": ap, "precision": p_grid[:, best], "recall": r_grid[:, best],
            "conf_thres": float(grid[best])}


def compute_map(dets: Sequence[np.ndarray], gts: Sequence[np.ndarray], nc: int,
                names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-image detections [n, 6] (xyxy, score, cls) and ground truth [m, 5] (cls, xyxy),
    in the same pixel frame -> metrics dict (see evaluate())."""
    tps, confs, classes = [], [], []
    n_gt = np.zeros(nc, int)
    n_img = np.zeros(nc, int)
    for d, g in zip(dets, gts):
        d = np.asarray(d, np.float64).reshape(-1, 6)
        g = np.asarray(g, np.float64).reshape(-1, 5)
        tps.append(match_image(d, g))
        confs.append(d[:, 4])
        classes.append(d[:, 5].astype(int))
        cls_g = g[:, 0].astype(int)
        if len(cls_g) and (cls_g.min() < 0 or cls_g.max() >= nc):
            raise ValueError(f"ground-truth class {cls_g.max()} outside 0..{nc - 1}")
        n_gt += np.bincount(cls_g, minlength=nc)
        n_img += np.bincount(np.unique(cls_g), minlength=nc)
    tp = np.concatenate(tps) if tps else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    conf = np.concatenate(confs) if confs else np.zeros(0)
    pred_cls = np.concatenate(classes) if classes else np.zeros(0, int)
    r = ap_per_class(tp, conf, pred_cls, n_gt)
    names = list(names) if names is not None else [str(c) for c in range(nc)]
    per_class = []
    for c in range(nc):
        has = n_gt[c] > 0
        per_class.append({"class": c, "name": names[c] if c < len(names) else str(c),
                          "n_images": int(n_img[c]), "n_labels": int(n_gt[c]),
                          "n_dets": int((pred_cls == c).sum()),
                          "precision": float(r["precision"][c]) if has else None,
                          "recall": float(r["recall"][c]) if has else None,
                          "ap50": float(r["ap"][c, 0]) if has else None,
                          "ap": float(r["ap"][c].mean()) if has else None})
    valid = n_gt > 0

    def mean(v: np.ndarray) -> float:
        return float(np.mean(v[valid])) if valid.any() else 0.0
    return {"precision": mean(r["precision"]), "recall": mean(r["recall"]),
            "map50": mean(r["ap"][:, 0]), "map": mean(r["ap"].mean(1)),
            "conf_thres_f1": r["conf_thres"], "per_class": per_class,
            "n_images": len(gts), "n_labels": int(n_gt.sum())}


def format_metrics(m: dict[str, Any], agreement: bool = False) -> str:
    """The per-class table: images, labels, P, R, mAP@.5, mAP@.5:.95 (P/R at the max-F1 conf).
    agreement: the truth was a reference model's detections, and the columns say so."""
    def f(v: float | None) -> str:
        return "      -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:7.3f}"
    width = max([len("all")] + [len(c["name"]) for c in m["per_class"]])
    cols = ("ref", "agrP", "agrR", "agr50", "agr") if agreement else ("labels", "P", "R", "mAP50", "mAP")
    head = f"{'class':>{width}} {'images':>7} " + " ".join(f"{c:>7}" for c in cols)
    rows = [head, f"{'all':>{width}} {m['n_images']:7d} {m['n_labels']:7d} {f(m['precision'])} "
                  f"{f(m['recall'])} {f(m['map50'])} {f(m['map'])}"]
    hidden = 0
    for c in m["per_class"]:
        if not c["n_labels"] and not c["n_dets"]:  # nothing to say (most of COCO's 80 on a scene)
            hidden += 1
            continue
        rows.append(f"{c['name']:>{width}} {c['n_images']:7d} {c['n_labels']:7d} {f(c['precision'])} "
                    f"{f(c['recall'])} {f(c['ap50'])} {f(c['ap'])}")
    rows.append(f"(P and R at confidence {m.get('conf_thres_f1', 0):.3f}, the max mean-F1 point"
                + (f"; {hidden} classes with no labels and no detections not shown)" if hidden else ")"))
    return "\n".join(rows)


def targets_to_pixels(targets: torch.Tensor, hw: tuple[int, int], batch_size: int) -> list[np.ndarray]:
    """Loader targets [N, 6] (img, cls, cx, cy, w, h) normalised -> per image [m, 5] cls xyxy px."""
    t = targets.detach().cpu().double()
    h, w = hw
    xyxy = xywh2xyxy(t[:, 2:6] * torch.tensor([w, h, w, h], dtype=torch.float64))
    rows = torch.cat([t[:, 1:2], xyxy], 1).numpy()
    img = t[:, 0].long().numpy()
    return [rows[img == b] for b in range(batch_size)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataloader: Iterable, conf_thres: float = 0.001,
             iou_thres: float = 0.6, device: str | torch.device = "cpu", half: bool = False,
             progress: bool = True, names: Sequence[str] | None = None, nc: int | None = None,
             max_det: int = 300, reference: torch.nn.Module | None = None,
             reference_conf: float = 0.25) -> dict[str, Any]:
    """Run model (in eval mode, restored after) over the loader's (imgs, targets, paths, shapes)
    batches and return precision, recall, map50, map, per_class, n_images, n_labels.
    Boxes are compared in network-input pixels: IoU is invariant to the preprocessing's
    per-axis scale and padding (data.preprocess).

    With `reference` (a model), the ground truth of each image is the reference's detections
    with score >= reference_conf on the same input, after the same NMS: the result is the
    *agreement* of model with reference (1.0 for a model with itself), not accuracy; the dict
    says so ("scored_against": "reference")."""
    from tqdm import tqdm
    device = torch.device(device)
    half = half and device.type == "cuda"
    nc = nc if nc is not None else int(getattr(model, "num_classes"))
    was_training = model.training
    model.eval()
    dets: list[np.ndarray] = []
    gts: list[np.ndarray] = []
    try:
        for imgs, targets, _paths, _shapes in tqdm(dataloader, desc="evaluate", disable=not progress,
                                                  leave=False):
            imgs = imgs.to(device, non_blocking=True).float()
            # autocast instead of model.half(): the caller's model keeps its dtype
            with torch.autocast(device.type, dtype=torch.float16, enabled=half):
                pred = model(imgs)
            pred = pred[0] if isinstance(pred, (tuple, list)) else pred
            out = non_max_suppression(pred.float(), conf_thres, iou_thres, max_det, multi_label=True)
            dets += [o.cpu().double().numpy() for o in out]
            if reference is None:
                gts += targets_to_pixels(targets, tuple(imgs.shape[-2:]), len(imgs))
            else:
                gts += reference_truth(reference, imgs, reference_conf, iou_thres, max_det)
    finally:
        model.train(was_training)
    out = compute_map(dets, gts, nc, names)
    out["scored_against"] = "labels" if reference is None else "reference"
    return out


@torch.no_grad()
def reference_truth(reference: torch.nn.Module, imgs: torch.Tensor, conf_thres: float,
                    iou_thres: float, max_det: int = 300) -> list[np.ndarray]:
    """A reference model's detections with score >= conf_thres as ground truth [m, 5] (cls,
    xyxy px) per image. The NMS is the evaluation's own (same IoU, multi-label): every box the
    evaluated copy of the same model keeps above conf_thres is then exactly one of these, so a
    model agrees with itself at 1.0."""
    was_training = reference.training
    reference.eval()
    try:
        pred = reference(imgs)
    finally:
        reference.train(was_training)
    pred = pred[0] if isinstance(pred, (tuple, list)) else pred
    out = non_max_suppression(pred.float(), conf_thres - 1e-9, iou_thres, max_det, multi_label=True)
    return [torch.cat([o[:, 5:6], o[:, :4]], 1).cpu().double().numpy() for o in out]


def validation_loader(data: str, img_size: int, batch_size: int, limit: int | None = None,
                      preprocess: str = "letterbox"):
    """The .data file's valid list as evaluation batches (letterboxed by default, no
    augmentation; preprocess: data.preprocess's mode), and the parsed .data: the one way every
    tool scores a model on a .data file."""
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    dc = parse_data_file(data)
    loader, _ = create_dataloader(dc.valid, img_size, batch_size, augment=False, workers=0,
                                  nc=dc.classes, limit=limit or None, verbose=False,
                                  preprocess=preprocess)
    return loader, dc


def evaluate_on_data(models: Sequence[torch.nn.Module], data: str, img_size: int,
                     batch_size: int = 8, limit: int | None = None) -> list[dict[str, float]]:
    """mAP@0.5 and mAP@0.5:0.95 of each model on the .data file's valid list (first `limit`
    images), the batches loaded once and shared."""
    loader, dc = validation_loader(data, img_size, batch_size, limit)
    batches = list(loader)
    out = []
    for m in models:
        res = evaluate(m, batches, progress=False, names=dc.names, nc=dc.classes)
        out.append({"map50": float(res["map50"]), "map": float(res["map"])})
    return out
