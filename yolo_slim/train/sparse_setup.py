"""train_sparse.py --sr: the sparsity hook configured and range-checked from the TrainConfig
flags (FLOPs or latency target, weights, schedule), the latency table and the runtime timer
handed in by the script (train/ sits below deploy/)."""
from __future__ import annotations

from yolo_slim.analysis.latency import LatencyTable
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.nn.model import Darknet
from yolo_slim.train.latency_loop import Measure, MeasuredTarget
from yolo_slim.train.sparsity import SCHEDULES, SparsitySchedule, make_sparsity_hook

PRUNE_STRATEGY = {0: "normal", 1: "shortcut"}  # --prune 0|1, the names users know


def make_train_hooks(cfg, model: Darknet, measure: Measure | None = None) -> list:
    """train_sparse.py --sr: the sparsity hook configured from the TrainConfig flags; `measure`
    times the compact model of the dead set against the uncut one (latency targets)."""
    from yolo_slim.darknet.cfg import net_size
    from yolo_slim.train.prox import WEIGHTS
    if cfg.prune not in PRUNE_STRATEGY:
        raise YoloSlimError(f"--prune must be 0 (normal) or 1 (shortcut/slim), not {cfg.prune}")
    kind = cfg.sparsity or "constant"
    if kind not in SCHEDULES:
        raise YoloSlimError(f"--sparsity must be one of {', '.join(SCHEDULES)}, not {kind!r}")
    if cfg.s <= 0:
        raise YoloSlimError(f"--s must be positive, not {cfg.s}")
    if not (0 <= cfg.sparsity_decay_start <= 1 and 0 <= cfg.sparsity_decay_factor <= 1
            and 0 <= cfg.sparsity_keep_fraction <= 1):
        raise YoloSlimError("--sparsity-decay-start, --sparsity-decay-factor and "
                            "--sparsity-keep-fraction must be in [0, 1]")
    update = getattr(cfg, "sparsity_update", "subgradient")
    speedup, latency_ms = getattr(cfg, "target_speedup", 0.0), getattr(cfg, "target_latency", 0.0)
    weight = getattr(cfg, "sparsity_weight", "auto")
    if weight == "auto":  # a latency target spends the penalty where the runtime's time is
        weight = "latency" if speedup or latency_ms else "uniform"
    target, recover = getattr(cfg, "target_flops", 0.0), getattr(cfg, "target_recover", 0.3)
    layer_keep = getattr(cfg, "target_layer_keep", 0.1)
    if update not in ("prox", "subgradient"):
        raise YoloSlimError(f"--sparsity-update must be prox or subgradient, not {update!r}")
    if weight not in WEIGHTS:
        raise YoloSlimError(f"--sparsity-weight must be one of auto, {', '.join(WEIGHTS)}, not {weight!r}")
    given = [f for f, v in (("--target-flops", target), ("--target-speedup", speedup),
                            ("--target-latency", latency_ms)) if v]
    if len(given) > 1:
        raise YoloSlimError(f"give one of --target-flops, --target-speedup, --target-latency, not {' and '.join(given)}")
    if given:
        _check_target(given[0], target, speedup, update, kind, recover)
    latency = None
    if weight == "latency" or speedup or latency_ms:
        path = getattr(cfg, "latency_table", "")
        if not path:  # train_sparse.py measures or finds the cached table and sets the path
            raise YoloSlimError(f"{'--sparsity-weight latency' if not given else given[0]} needs --latency-table")
        latency = LatencyTable.load(path)
    schedule = SparsitySchedule(s=cfg.s, kind=kind, decay_start=cfg.sparsity_decay_start,
                                decay_factor=cfg.sparsity_decay_factor,
                                keep_fraction=cfg.sparsity_keep_fraction)
    img = cfg.img_size or net_size(getattr(model, "module", model).module_defs)[1]
    strategy = PRUNE_STRATEGY[cfg.prune]
    loop = None
    if speedup or latency_ms:
        loop = MeasuredTarget(latency.predict(getattr(model, "module", model).module_defs)["total_ms"],
                              speedup, latency_ms, measure, strategy, (img, img), cfg.latency_table)
    return [make_sparsity_hook(model, strategy, schedule, cfg.epochs,
                               cfg.output_dir, update=update, weight=weight, target_flops=target,
                               recover=recover, img_hw=(img, img), layer_keep=layer_keep,
                               latency=latency, kill=getattr(cfg, "target_kill", "all"),
                               importance=getattr(cfg, "target_importance", "norm"),
                               latency_target=loop)]


def _check_target(flag: str, flops: float, speedup: float, update: str, kind: str,
                  recover: float) -> None:
    if flops and not 0 < flops < 1:
        raise YoloSlimError(f"--target-flops must be in (0, 1), not {flops}")
    if speedup and not speedup > 1:
        raise YoloSlimError(f"--target-speedup must be > 1, not {speedup}")
    if update != "prox":
        raise YoloSlimError(f"{flag} needs --sparsity-update prox (only the prox step makes "
                            "channels dead)")
    if kind != "constant":
        raise YoloSlimError(f"{flag} sets s itself: leave --sparsity constant")
    if not 0 <= recover < 1:
        raise YoloSlimError(f"--target-recover must be in [0, 1), not {recover}")
