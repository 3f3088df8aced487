"""The one training loop behind baseline, sparse and distillation training.

`train(cfg, model, hooks)` runs epochs of: forward (channels-last; autocast fp16 on CUDA, bf16
on CPUs with native bf16) -> YOLO loss (+ hook loss
terms) -> backward, accumulated to `nominal_batch` -> unscale -> hook gradient edits -> SGD
step -> hook weight edits -> EMA. Rank 0 evaluates, logs results.csv/.png and writes
last.pt/best.pt atomically, holding <output-dir>/.run.lock; SIGTERM/SIGHUP stop a run as Ctrl-C
does (core/process.py); a non-finite loss or weight stops it, naming the step, before anything
is saved (train/divergence.py). The engine knows hooks, not what they do: sparsity training, for
one, is a hook built by yolo_slim.train.sparsity (which imports this module, never the reverse).

Hooks (subclass TrainHooks, train/hooks.py, override what you need):
  use_loss_hyp(hyp)                once before training: the LossHyp (gains) the YOLO loss uses
  relabel(imgs, targets) -> targets  before the forward: the batch's targets (default: as loaded);
                                   e.g. a teacher's detections as labels (train/teacher.py)
  eval_reference() -> (model, conf) or None  rank 0: score against this model's detections
                                   (score >= conf) instead of the validation labels: agreement
  extra_loss(imgs, raw, targets)   -> None or (loss tensor, {name: float}); e.g. distillation
  after_backward(model, step)      after all-reduce and scaler.unscale_(), before step(); runs
                                   once per optimizer step on every rank; e.g. L1 on BN gamma
  after_step(model, optimizer, lr, progress)  right after every optimizer step that happened (an
                                   AMP step skipped for inf/NaN gradients is not one), every
                                   rank, before the EMA update; progress = share of the run's
                                   micro-batches done, in (0, 1]; e.g. a proximal step on weights
  finalize(model)                  every rank, at epoch end, on the model about to be evaluated
                                   and saved (the EMA copy with --ema, else the raw model); may
                                   edit it in place
  selectable(epoch) -> bool        rank 0: may this epoch's model become best.pt (default yes)
  epoch_start(epoch, model)        every rank; epoch_end(epoch, model) -> {column: float},
                                   rank 0 only, may write plots into cfg.output_dir
  state_dict() / load_state_dict() what the hook needs to continue after --resume

Checkpoints: `model` is the EMA weights when --ema (what is evaluated, what best.pt holds and
what the pruning stages read); last.pt adds train_model (raw weights), optimizer, scaler,
ema_updates, epoch, best_fitness, results (the CSV rows), opt (this config), rng and hooks.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from yolo_slim.core import device as dv
from yolo_slim.core.process import Interrupted, deferred, run_lock, stop_on_signals
from yolo_slim.darknet.cfg import net_size
from yolo_slim.data.dataset import Augment, create_dataloader, parse_data_file
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.nn.model import check_img_size, largest_stride
from yolo_slim.train.config import RUNTIME_FIELDS, TrainConfig, resume_config  # noqa: F401 (re-exported)
from yolo_slim.train.divergence import check_loss, check_weights
from yolo_slim.train.hooks import TrainHooks  # noqa: F401 (re-exported: hooks subclass it from here)
from yolo_slim.train.loss import LossHyp, yolo_loss
from yolo_slim.train.optim import ModelEMA, build_optimizer, lr_factor, set_lr
from yolo_slim.train.plots import plot_results
from yolo_slim.train.validation import check_labels, fitness_of, score_line, validate  # noqa: F401
from yolo_slim.nn.weights import load_checkpoint_into, read_checkpoint, save_checkpoint, state_tensors


# what a run writes into its output dir (gamma_hist.png: the sparsity hook), for the output guard
RUN_FILES = ("last.pt", "best.pt", "opt.json", "results.csv", "results.png", "gamma_hist.png")


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


def amp_name(dtype: torch.dtype | None) -> str:
    """The autocast dtype as opt.json and last.pt record it: float16, bfloat16 or off."""
    return str(dtype).replace("torch.", "") if dtype is not None else "off"


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, restval="")
    w.writeheader()
    w.writerows([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    atomic_write_bytes(path, buf.getvalue().encode())


def train(cfg: TrainConfig, model: torch.nn.Module, hooks: Sequence[TrainHooks] = ()) -> dict[str, Any]:
    """Train `model` (already holding --weights, if any) as `cfg` says; returns a summary.
    With cfg.resume, the run's saved config and state replace `cfg`'s and the model's."""
    ckpt_path = None
    if cfg.resume:
        cfg, ckpt_path = resume_config(cfg)
    rank, world, local = dv.ddp_env()
    device = dv.select_device(cfg.device, local)
    dv.init_distributed(device, world)
    main = rank <= 0
    try:  # one run per output dir; SIGTERM/SIGHUP stop it as Ctrl-C does (core/process.py)
        with stop_on_signals(), run_lock(cfg.output_dir) if main else contextlib.nullcontext():
            return _train(cfg, model, list(hooks), ckpt_path, rank, world, device, main)
    except Interrupted as e:
        last = os.path.join(cfg.output_dir, "last.pt")
        e.note = (f"{last} holds the last finished epoch; --resume {last} continues from there"
                  if os.path.isfile(last) else "no epoch had finished, nothing was saved")
        raise
    finally:
        dv.cleanup_distributed()


def _train(cfg, model, hooks, ckpt_path, rank, world, device, main) -> dict[str, Any]:
    data = parse_data_file(cfg.data)
    if model.num_classes != data.classes:
        raise YoloSlimError(f"the cfg's [yolo] layers have classes={model.num_classes} but "
                            f"{cfg.data} has classes={data.classes}")
    img_size = check_img_size(model.module_defs, (cfg.img_size or net_size(model.module_defs)[1],) * 2)[0]
    stride = largest_stride(model.module_defs)  # rect batches and multi-scale sizes are multiples
    if cfg.batch_size % world:
        raise YoloSlimError(f"--batch-size {cfg.batch_size} must divide by the {world} processes")
    bs = cfg.batch_size // world
    amp = dv.amp_dtype(device, cfg.amp)
    aug = Augment(cfg.hsv_h, cfg.hsv_s, cfg.hsv_v, cfg.fliplr, cfg.scale, cfg.translate, cfg.mosaic)
    workers = dv.auto_workers(device, cfg.workers)
    loader, train_ds = create_dataloader(data.train, img_size, bs, True, workers=workers,
                                         nc=data.classes, rank=rank, seed=cfg.seed, aug=aug,
                                         world=world, verbose=main, stride=stride)
    check_labels(cfg, train_ds, data.train, hooks)
    val_loader = None
    if main:
        val_loader, _ = create_dataloader(data.valid, img_size, bs, False, rect=True,
                                          workers=workers, nc=data.classes,
                                          limit=cfg.eval_subset or None, stride=stride)
    dv.seed_all(cfg.seed)
    # channels-last is oneDNN's (and cuDNN's tensor cores') native conv layout: 1.4x faster fp32
    # steps on CPU, more with bf16; saved tensors are made contiguous again (nn/weights.py)
    model.to(device, memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.lr0, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    hyp = LossHyp(cfg.box, cfg.obj, cfg.cls, cfg.anchor_t, cfg.iou_obj, cfg.label_smoothing)
    for h in hooks:  # e.g. distillation weighs its terms with the same gains
        h.use_loss_hyp(hyp)
    start, best, rows = 0, -1.0, []
    if ckpt_path:
        ck = read_checkpoint(ckpt_path)
        load_checkpoint_into(model, {**ck, "model": ck["train_model"]}, ckpt_path)
        opt.load_state_dict(ck["optimizer"])
        if ck["scaler"]:  # empty when the run had no scaler (CPU, bf16)
            scaler.load_state_dict(ck["scaler"])
        if main and ck.get("amp_dtype", "off") != amp_name(amp):
            print(f"warning: {ckpt_path} trained with mixed precision {ck.get('amp_dtype', 'off')}, "
                  f"this machine resumes it with {amp_name(amp)}: not bitwise the uninterrupted run")
        if ema is not None:
            load_checkpoint_into(ema.ema, ck, ckpt_path)
            ema.updates = ck["ema_updates"]
        start, best, rows = ck["epoch"] + 1, ck["best_fitness"], ck["results"]
        dv.set_rng_state(ck["rng"])
        for h, st in zip(hooks, ck.get("hooks", [])):
            h.load_state_dict(st)
        if main:
            print(f"resuming {ckpt_path} at epoch {start}")
    out = cfg.output_dir
    accumulate = max(round(cfg.nominal_batch / cfg.batch_size), 1)
    nb = len(loader)
    n_warm = round(cfg.warmup_epochs * nb)
    if main:
        os.makedirs(out, exist_ok=True)
        resolved = {**dataclasses.asdict(cfg), "img_size": img_size, "device": str(device),
                    "world_size": world, "accumulate": accumulate,
                    "amp_dtype": amp_name(amp)}
        atomic_write_bytes(os.path.join(out, "opt.json"), json.dumps(resolved, indent=2).encode())
    raw_model = model
    if world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    last, best_pt = os.path.join(out, "last.pt"), os.path.join(out, "best.pt")
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        for h in hooks:
            h.epoch_start(epoch, raw_model)
        loader.sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        model.train()
        if cfg.freeze_bn:  # running statistics used and kept: the pretrained model's own
            for m in raw_model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        sums: dict[str, float] = {}
        opt.zero_grad(set_to_none=True)
        bar = loader
        if main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=True)
        for i, (imgs, targets, _, _) in enumerate(bar):
            ni = i + nb * epoch
            lr = set_lr(opt, ni, n_warm, cfg.lr0,
                        lr_factor(ni / nb, cfg.epochs, cfg.lr_schedule, cfg.lrf, cfg.lr_steps),
                        cfg.momentum, cfg.warmup_momentum, cfg.warmup_bias_lr)
            imgs = imgs.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            if cfg.multi_scale:  # the size depends only on (seed, epoch, i): resume-safe
                r = np.random.default_rng([cfg.seed, epoch, i, 1])
                s = int(r.integers(max(img_size // (2 * stride), 1), img_size * 3 // (2 * stride) + 1)) * stride
                imgs = F.interpolate(imgs, size=(s, s), mode="bilinear", align_corners=False)
            group = i // accumulate
            n_acc = min(accumulate, nb - group * accumulate)  # the epoch's last step may be short
            sync = (i + 1) % accumulate == 0 or i == nb - 1
            nosync = model.no_sync() if world > 1 and not sync else contextlib.nullcontext()
            with nosync:
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    for h in hooks:  # e.g. the teacher's detections on this very batch
                        targets = h.relabel(imgs, targets)
                    raw = model(imgs)
                    loss, items = yolo_loss(raw, targets, raw_model, tuple(imgs.shape[-2:]), hyp)
                    logs = dict(zip(("box", "obj", "cls"), items[:3].tolist()))
                    for h in hooks:
                        extra = h.extra_loss(imgs, raw, targets)
                        if extra is not None:
                            loss = loss + extra[0]
                            logs.update(extra[1])
                check_loss(loss, logs, world, epoch, i, last)
                logs["total"] = float(loss.detach())
                scaler.scale(loss / n_acc).backward()
            if sync:
                if optimizer_step(raw_model, opt, scaler, hooks, ni, lr, (ni + 1) / (nb * cfg.epochs),
                                  cfg.clip_grad):
                    check_weights(raw_model, epoch, i, last)  # the loss may stay finite meanwhile
                if ema is not None:
                    ema.update(raw_model)
            raw_model.seen += imgs.shape[0] * world
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            if bar is not loader:
                bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in sums.items()} | {"lr": f"{lr:.2e}"})
        final = ema.ema if ema is not None else raw_model
        for h in hooks:
            h.finalize(final)
        if main:
            final.seen = raw_model.seen
            row: dict[str, Any] = {"epoch": epoch, "lr": lr}
            row.update({k: v / max(nb, 1) for k, v in sums.items()})
            metrics = None
            if (epoch + 1) % max(cfg.eval_interval, 1) == 0 or epoch == cfg.epochs - 1:
                metrics = validate(final, val_loader, cfg, device, hooks)
                row.update(metrics)
            for h in hooks:
                row.update(h.epoch_end(epoch, raw_model))
            row["time_s"] = round(time.time() - t0, 2)
            rows.append(row)
            fitness = fitness_of(metrics) if metrics else None
            is_best = (fitness is not None and fitness > best
                       and all(h.selectable(epoch) for h in hooks))
            best = fitness if is_best else best
            with deferred():  # a signal waits for the epoch's files; best.pt before the last.pt
                _write_csv(os.path.join(out, "results.csv"), rows)  # that names its fitness
                plot_results(os.path.join(out, "results.csv"), os.path.join(out, "results.png"))
                if is_best:
                    save_checkpoint(final, best_pt, epoch=epoch, best_fitness=best, metrics=metrics)
                save_checkpoint(final, last, epoch=epoch, best_fitness=best, results=rows,
                                opt=dataclasses.asdict(cfg), train_model=state_tensors(raw_model),
                                optimizer=opt.state_dict(), scaler=scaler.state_dict(),
                                ema_updates=ema.updates if ema else 0, rng=dv.rng_state(),
                                hooks=[h.state_dict() for h in hooks], amp_dtype=amp_name(amp))
        dv.barrier(world)
    return {"output_dir": out, "best_fitness": best, "results": rows, "last": last,
            "best": best_pt}
