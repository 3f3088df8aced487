"""One epoch of the training engine (train/engine.py): what a run carries from epoch to epoch
(`Run`), the micro-batch loop with gradient accumulation, and the optimizer step in the order
the hooks rely on. The engine sets a Run up, calls `train_epoch` per epoch, then evaluates and
saves; this module knows nothing of files."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from yolo_slim.train.config import TrainConfig
from yolo_slim.train.divergence import check_loss, check_weights
from yolo_slim.train.hooks import TrainHooks
from yolo_slim.train.loss import LossHyp, yolo_loss
from yolo_slim.train.optim import ModelEMA, lr_factor, set_lr


@dataclasses.dataclass
class Run:
    """A training run once set up: `model` is what the forward calls (the DDP wrapper when
    world > 1), `raw_model` the Darknet under it; `start`, `best` and `rows` come from the
    checkpoint on --resume. `last` is last.pt's path (divergence errors name it)."""
    cfg: TrainConfig
    model: torch.nn.Module
    raw_model: torch.nn.Module
    hooks: list[TrainHooks]
    loader: Any
    train_ds: Any
    val_loader: Any
    opt: torch.optim.Optimizer
    ema: ModelEMA | None
    scaler: torch.amp.GradScaler
    hyp: LossHyp
    device: torch.device
    amp: torch.dtype | None
    world: int
    main: bool
    img_size: int
    stride: int
    last: str
    start: int = 0
    best: float = -1.0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def accumulate(self) -> int:
        """Micro-batches per optimizer step: --nominal-batch over --batch-size."""
        return max(round(self.cfg.nominal_batch / self.cfg.batch_size), 1)


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler, hooks, step: int,
                   lr: float, progress: float, clip_grad: float = 0.0) -> bool:
    """One optimizer step on the accumulated gradients, in the order every hook relies on:
    unscale -> after_backward hooks -> clip -> step -> after_step hooks. Under DDP the gradients
    are already all-reduced here, so every rank does the same. Returns whether the step happened
    (AMP skips steps with inf/NaN gradients; after_step hooks do not run then)."""
    scaler.unscale_(opt)  # hooks see true gradients, not AMP-scaled ones
    for h in hooks:
        h.after_backward(model, step)
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    stepped = scale is None or scaler.get_scale() >= scale  # the scale backs off on a skip
    if stepped:
        for h in hooks:
            h.after_step(model, opt, lr, progress)
    return stepped


def train_epoch(run: Run, epoch: int) -> tuple[dict[str, float], float]:
    """One epoch of micro-batches on every rank; returns the summed log terms (box, obj, cls,
    the hooks' terms, total) and the last learning rate."""
    cfg, nb = run.cfg, len(run.loader)
    n_warm = round(cfg.warmup_epochs * nb)
    for h in run.hooks:
        h.epoch_start(epoch, run.raw_model)
    run.loader.sampler.set_epoch(epoch)
    run.train_ds.set_epoch(epoch)
    run.model.train()
    if cfg.freeze_bn:  # running statistics used and kept: the pretrained model's own
        for m in run.raw_model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    sums: dict[str, float] = {}
    run.opt.zero_grad(set_to_none=True)
    bar = run.loader
    if run.main and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(run.loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=True)
    for i, (imgs, targets, _, _) in enumerate(bar):
        ni = i + nb * epoch
        lr = set_lr(run.opt, ni, n_warm, cfg.lr0,
                    lr_factor(ni / nb, cfg.epochs, cfg.lr_schedule, cfg.lrf, cfg.lr_steps),
                    cfg.momentum, cfg.warmup_momentum, cfg.warmup_bias_lr)
        imgs = imgs.to(run.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if cfg.multi_scale:
            imgs = _rescale(imgs, cfg.seed, epoch, i, run.img_size, run.stride)
        logs = _micro_batch(run, epoch, i, imgs, targets, lr)
        run.raw_model.seen += imgs.shape[0] * run.world
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        if bar is not run.loader:
            bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in sums.items()} | {"lr": f"{lr:.2e}"})
    return sums, lr


def _rescale(imgs: torch.Tensor, seed: int, epoch: int, i: int, img_size: int,
             stride: int) -> torch.Tensor:
    """--multi-scale: the batch resized to a stride multiple in [0.5, 1.5] x img_size, drawn
    from (seed, epoch, i) alone so that a resumed run draws the same sizes."""
    r = np.random.default_rng([seed, epoch, i, 1])
    s = int(r.integers(max(img_size // (2 * stride), 1), img_size * 3 // (2 * stride) + 1)) * stride
    return F.interpolate(imgs, size=(s, s), mode="bilinear", align_corners=False)


def _micro_batch(run: Run, epoch: int, i: int, imgs: torch.Tensor, targets: torch.Tensor,
                 lr: float) -> dict[str, float]:
    """Forward, loss and backward of micro-batch `i`; at the end of an accumulation group the
    optimizer step, the weight check and the EMA update. Returns its log terms."""
    cfg, nb, acc = run.cfg, len(run.loader), run.accumulate
    n_acc = min(acc, nb - (i // acc) * acc)  # the epoch's last step may be short
    sync = (i + 1) % acc == 0 or i == nb - 1
    nosync = run.model.no_sync() if run.world > 1 and not sync else contextlib.nullcontext()
    with nosync:
        with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
            for h in run.hooks:  # e.g. the teacher's detections on this very batch
                targets = h.relabel(imgs, targets)
            raw = run.model(imgs)
            loss, items = yolo_loss(raw, targets, run.raw_model, tuple(imgs.shape[-2:]), run.hyp)
            logs = dict(zip(("box", "obj", "cls"), items[:3].tolist()))
            for h in run.hooks:
                extra = h.extra_loss(imgs, raw, targets)
                if extra is not None:
                    loss = loss + extra[0]
                    logs.update(extra[1])
        check_loss(loss, logs, run.world, epoch, i, run.last)
        logs["total"] = float(loss.detach())
        run.scaler.scale(loss / n_acc).backward()
    if sync:
        ni = i + nb * epoch
        if optimizer_step(run.raw_model, run.opt, run.scaler, run.hooks, ni, lr,
                          (ni + 1) / (nb * cfg.epochs), cfg.clip_grad):
            check_weights(run.raw_model, epoch, i, run.last)  # the loss may stay finite meanwhile
        if run.ema is not None:
            run.ema.update(run.raw_model)
    return logs
