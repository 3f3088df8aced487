"""What the training loop scores each epoch and how it reads the scores: validation on the
labels or, label-free, agreement with a hook's reference model (named as such: agree50/agree);
best.pt's fitness; the check that a training set has labels at all."""
from __future__ import annotations

from typing import Any, Sequence

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.train.config import TrainConfig
from yolo_slim.train.hooks import TrainHooks


def validate(model, loader, cfg: TrainConfig, device, hooks: Sequence = ()) -> dict[str, float]:
    """mAP on the validation labels, or agreement with a hook's reference model (label-free)."""
    from yolo_slim.eval.evaluate import evaluate
    ref = next((r for r in (h.eval_reference() for h in hooks) if r is not None), (None, 0.0))
    r = evaluate(model, loader, conf_thres=cfg.conf_thres, iou_thres=cfg.iou_thres,
                 device=device, half=False, progress=False, reference=ref[0], reference_conf=ref[1])
    keys = ("precision", "recall", "map50", "map")
    # agreement is not accuracy: its columns are named for what they are
    names = keys if ref[0] is None else ("agree_p", "agree_r", "agree50", "agree")
    return {n: float(r[k]) for n, k in zip(names, keys)}


def fitness_of(m: dict[str, float]) -> float:
    """What best.pt maximises: 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95 (or the agreement's)."""
    return 0.1 * m.get("map50", m.get("agree50", 0.0)) + 0.9 * m.get("map", m.get("agree", 0.0))


def score_line(row: dict[str, Any]) -> str:
    """'map50=… map=…' or, for a label-free run, 'agreement@0.5=… agreement=…'."""
    if "agree50" in row:
        return f"agreement@0.5={row['agree50']:.4f} agreement@0.5:0.95={row['agree']:.4f}"
    return f"map50={row.get('map50', 0):.4f} map={row.get('map', 0):.4f}"


def check_labels(cfg: TrainConfig, ds, list_path: str, hooks: Sequence) -> None:
    """A training set in which no image has a label file would train the model to detect
    nothing; that is a user error unless a hook (--labels teacher) makes the labels."""
    relabels = any(type(h).relabel is not TrainHooks.relabel for h in hooks)
    if cfg.labels == "teacher" and not relabels:
        raise YoloSlimError("--labels teacher needs a teacher (--t-weights, or --weights to "
                            "slim) to label the batches")
    if cfg.labels == "files" and ds.stats.get("missing_label", 0) == len(ds):
        raise YoloSlimError(f"{list_path}: none of its {len(ds)} images has a label file; to "
                            "train without labels use --labels teacher (the teacher's "
                            "detections on each batch become the targets)")
