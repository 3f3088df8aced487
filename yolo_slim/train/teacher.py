"""Label-free training: a frozen teacher's detections on the batch become the targets.

Most users of a COCO model have images of their own scene and no labels. With `--labels
teacher` the teacher (the model being slimmed, frozen as it was loaded, or `--t-weights`) runs
on every *augmented* batch — the same mosaic, flip, scale and colour the student sees — and its
detections after NMS with score >= `--teacher-conf` are that batch's targets for the YOLO loss
(box, objectness, class), next to the distillation terms when `--kd` is on. Running it on the
augmented batch rather than labelling the files once matters: offline labels made on the plain
images no longer fit a flipped or rescaled crop's objects.

One teacher forward serves both the targets and the KD terms: `TeacherRunner` keeps the raw maps
of the last batch it saw.
"""
from __future__ import annotations

import weakref

import torch

from yolo_slim.nn.model import Darknet
from yolo_slim.train.engine import TrainHooks

TEACHER_NMS_IOU = 0.45  # darknet's own NMS threshold for its detections


class TeacherRunner:
    """A frozen teacher and its outputs on the last batch (one forward per batch whoever asks)."""

    def __init__(self, teacher: Darknet):
        self.model = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._src: weakref.ref | None = None
        self._version = -1
        self._raw: list[torch.Tensor] = []

    @torch.no_grad()
    def raw(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's raw head maps (fp32) on imgs, in the caller's autocast if any."""
        # the same tensor object, unmodified: a freed batch's memory is often reused by the next
        # one, so an address is no key
        src = self._src() if self._src is not None else None
        if src is not imgs or imgs._version != self._version:
            if next(self.model.parameters()).device != imgs.device:
                self.model.to(imgs.device)
            self.model.eval()  # its BN statistics never move, whatever the engine does
            self._raw = [t.float() for t in self.model.forward_raw(imgs)]
            self._src, self._version = weakref.ref(imgs), imgs._version
        return self._raw

    @torch.no_grad()
    def targets(self, imgs: torch.Tensor, conf_thres: float, max_det: int = 300) -> torch.Tensor:
        """Loader-style targets [N, 6] (img, cls, cx, cy, w, h), normalised to imgs' size: the
        teacher's detections with score >= conf_thres after per-class NMS."""
        hw = tuple(imgs.shape[-2:])
        dets = self.detections(imgs, conf_thres, TEACHER_NMS_IOU, max_det)
        return detections_to_targets(dets, hw)

    @torch.no_grad()
    def detections(self, imgs: torch.Tensor, conf_thres: float, iou_thres: float,
                   max_det: int = 300) -> list[torch.Tensor]:
        from yolo_slim.eval.evaluate import non_max_suppression
        pred = self.model.decode(self.raw(imgs), tuple(imgs.shape[-2:]))
        # conf_thres is inclusive for labels ("score >= t"); NMS keeps score > t
        return non_max_suppression(pred.float(), conf_thres - 1e-9, iou_thres, max_det)


def detections_to_targets(dets: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
    """Per-image [n, 6] (x1, y1, x2, y2, score, cls) in pixels -> [N, 6] (img, cls, cx, cy, w, h)
    normalised, boxes clipped to the image (a box hanging over the border is labelled by its
    visible part, as a human would)."""
    h, w = hw
    rows = []
    for k, d in enumerate(dets):
        if not len(d):
            continue
        b = d[:, :4].clone()
        b[:, [0, 2]] = b[:, [0, 2]].clamp(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clamp(0, h)
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        ok = (bw > 1e-3) & (bh > 1e-3)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        t = torch.stack([torch.full_like(cx, k), d[:, 5], cx / w, cy / h, bw / w, bh / h], 1)
        rows.append(t[ok])
    return torch.cat(rows).float() if rows else torch.zeros((0, 6))


class TeacherLabelHook(TrainHooks):
    """Replaces each batch's file labels by the teacher's detections on that batch, and makes the
    validation score an agreement with the teacher (the validation images have no labels
    either)."""

    def __init__(self, runner: TeacherRunner, conf_thres: float = 0.25):
        self.runner, self.conf_thres = runner, conf_thres
        self.n_boxes, self.n_imgs = 0, 0

    def relabel(self, imgs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.runner.targets(imgs, self.conf_thres)
        self.n_boxes, self.n_imgs = self.n_boxes + len(t), self.n_imgs + len(imgs)
        return t.to(targets.device)

    def eval_reference(self) -> tuple[torch.nn.Module, float] | None:
        return self.runner.model, self.conf_thres

    def epoch_start(self, epoch: int, model: torch.nn.Module) -> None:
        self.n_boxes, self.n_imgs = 0, 0

    def epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        return {"teacher_boxes_per_img": self.n_boxes / max(self.n_imgs, 1)}


def load_teacher(cfg_path: str | None, weights: str) -> TeacherRunner:
    from yolo_slim.nn.weights import load_model
    return TeacherRunner(load_model(cfg_path or None, weights))


def teacher_label_hooks(cfg, runner: TeacherRunner | None) -> list[TrainHooks]:
    """[the label hook] when cfg.labels is "teacher", else []."""
    if cfg.labels != "teacher":
        return []
    if runner is None:
        from yolo_slim.core.errors import YoloSlimError
        raise YoloSlimError("--labels teacher needs a teacher (--t-weights)")
    return [TeacherLabelHook(runner, cfg.teacher_conf)]
