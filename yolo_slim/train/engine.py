"""The one training loop behind baseline, sparse and distillation training.

`train(cfg, model, hooks)` runs epochs of: forward (channels-last; autocast fp16 on CUDA, bf16
on CPUs with native bf16) -> YOLO loss (+ hook loss
terms) -> backward, accumulated to `nominal_batch` -> unscale -> hook gradient edits -> SGD
step -> hook weight edits -> EMA. Rank 0 evaluates, logs results.csv/.png and writes
last.pt/best.pt atomically, holding <output-dir>/.run.lock; SIGTERM/SIGHUP stop a run as Ctrl-C
does (core/process.py); a non-finite loss or weight stops it, naming the step, before anything
is saved (train/divergence.py). The engine knows hooks, not what they do: sparsity training, for
one, is a hook built by yolo_slim.train.sparsity (which imports this module, never the reverse).
Here: set-up, --resume, opt.json and each epoch's evaluation and files; train/loop.py runs the
epoch itself (micro-batches, accumulation, the optimizer step).

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

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from yolo_slim.core import device as dv
from yolo_slim.core.process import Interrupted, deferred, run_lock, stop_on_signals
from yolo_slim.darknet.cfg import net_size
from yolo_slim.data.dataset import Augment, create_dataloader, parse_data_file
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.nn.model import check_img_size, largest_stride
from yolo_slim.train.config import RUNTIME_FIELDS, TrainConfig, resume_config  # noqa: F401 (re-exported)
from yolo_slim.train.hooks import TrainHooks  # noqa: F401 (re-exported: hooks subclass it from here)
from yolo_slim.train.loop import Run, optimizer_step, train_epoch  # noqa: F401 (optimizer_step re-exported)
from yolo_slim.train.loss import LossHyp
from yolo_slim.train.optim import ModelEMA, build_optimizer
from yolo_slim.train.plots import plot_results
from yolo_slim.train.validation import check_labels, fitness_of, score_line, validate  # noqa: F401
from yolo_slim.nn.weights import load_checkpoint_into, read_checkpoint, save_checkpoint, state_tensors


# what a run writes into its output dir (gamma_hist.png: the sparsity hook), for the output guard
RUN_FILES = ("last.pt", "best.pt", "opt.json", "results.csv", "results.png", "gamma_hist.png")


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
    """Set up (or restore), then per epoch: train it, finalize the model it ends with, and on
    rank 0 evaluate and save."""
    run = _set_up(cfg, model, hooks, rank, world, device, main)
    if ckpt_path:
        _restore(run, ckpt_path)
    if main:
        _write_opt(run)
    if world > 1:
        run.model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(run.start, cfg.epochs):
        t0 = time.time()
        sums, lr = train_epoch(run, epoch)
        final = run.ema.ema if run.ema is not None else run.raw_model
        for h in hooks:
            h.finalize(final)
        if main:
            final.seen = run.raw_model.seen
            _end_epoch(run, epoch, final, sums, lr, t0)
        dv.barrier(world)
    return {"output_dir": cfg.output_dir, "best_fitness": run.best, "results": run.rows,
            "last": run.last, "best": os.path.join(cfg.output_dir, "best.pt")}


def _set_up(cfg: TrainConfig, model, hooks: list[TrainHooks], rank: int, world: int,
            device: torch.device, main: bool) -> Run:
    """The data, the model on its device, optimizer, EMA, AMP scaler and loss gains of a fresh
    run (--resume then loads their state). The order keeps the seeded draws of a run."""
    data = parse_data_file(cfg.data)
    if model.num_classes != data.classes:
        raise YoloSlimError(f"the cfg's [yolo] layers have classes={model.num_classes} but "
                            f"{cfg.data} has classes={data.classes}")
    img_size = check_img_size(model.module_defs, (cfg.img_size or net_size(model.module_defs)[1],) * 2)[0]
    stride = largest_stride(model.module_defs)  # rect batches and multi-scale sizes are multiples
    if cfg.batch_size % world:
        raise YoloSlimError(f"--batch-size {cfg.batch_size} must divide by the {world} processes")
    bs = cfg.batch_size // world
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
    amp = dv.amp_dtype(device, cfg.amp)
    opt = build_optimizer(model, cfg.lr0, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    hyp = LossHyp(cfg.box, cfg.obj, cfg.cls, cfg.anchor_t, cfg.iou_obj, cfg.label_smoothing)
    for h in hooks:  # e.g. distillation weighs its terms with the same gains
        h.use_loss_hyp(hyp)
    return Run(cfg=cfg, model=model, raw_model=model, hooks=hooks, loader=loader,
               train_ds=train_ds, val_loader=val_loader, opt=opt, ema=ema, scaler=scaler,
               hyp=hyp, device=device, amp=amp, world=world, main=main, img_size=img_size,
               stride=stride, last=os.path.join(cfg.output_dir, "last.pt"))


def _restore(run: Run, ckpt_path: str) -> None:
    """--resume: weights, optimizer, scaler, EMA, epoch, results, RNG and hook state of last.pt."""
    ck = read_checkpoint(ckpt_path)
    load_checkpoint_into(run.raw_model, {**ck, "model": ck["train_model"]}, ckpt_path)
    run.opt.load_state_dict(ck["optimizer"])
    if ck["scaler"]:  # empty when the run had no scaler (CPU, bf16)
        run.scaler.load_state_dict(ck["scaler"])
    if run.main and ck.get("amp_dtype", "off") != amp_name(run.amp):
        print(f"warning: {ckpt_path} trained with mixed precision {ck.get('amp_dtype', 'off')}, "
              f"this machine resumes it with {amp_name(run.amp)}: not bitwise the uninterrupted run")
    if run.ema is not None:
        load_checkpoint_into(run.ema.ema, ck, ckpt_path)
        run.ema.updates = ck["ema_updates"]
    run.start, run.best, run.rows = ck["epoch"] + 1, ck["best_fitness"], ck["results"]
    dv.set_rng_state(ck["rng"])
    for h, st in zip(run.hooks, ck.get("hooks", [])):
        h.load_state_dict(st)
    if run.main:
        print(f"resuming {ckpt_path} at epoch {run.start}")


def _write_opt(run: Run) -> None:
    """opt.json: the config as resolved on this machine (size, device, processes, precision)."""
    cfg = run.cfg
    os.makedirs(cfg.output_dir, exist_ok=True)
    resolved = {**dataclasses.asdict(cfg), "img_size": run.img_size, "device": str(run.device),
                "world_size": run.world, "accumulate": run.accumulate,
                "amp_dtype": amp_name(run.amp)}
    atomic_write_bytes(os.path.join(cfg.output_dir, "opt.json"), json.dumps(resolved, indent=2).encode())


def _end_epoch(run: Run, epoch: int, final: torch.nn.Module, sums: dict[str, float], lr: float,
               t0: float) -> None:
    """Rank 0 after an epoch: evaluate `final` when due, add the epoch's row to results.csv/.png
    and write best.pt (when it beats the best so far) and last.pt."""
    cfg, hooks, out = run.cfg, run.hooks, run.cfg.output_dir
    row: dict[str, Any] = {"epoch": epoch, "lr": lr}
    row.update({k: v / max(len(run.loader), 1) for k, v in sums.items()})
    metrics = None
    if (epoch + 1) % max(cfg.eval_interval, 1) == 0 or epoch == cfg.epochs - 1:
        metrics = validate(final, run.val_loader, cfg, run.device, hooks)
        row.update(metrics)
    for h in hooks:
        row.update(h.epoch_end(epoch, run.raw_model))
    row["time_s"] = round(time.time() - t0, 2)
    run.rows.append(row)
    fitness = fitness_of(metrics) if metrics else None
    is_best = fitness is not None and fitness > run.best and all(h.selectable(epoch) for h in hooks)
    run.best = fitness if is_best else run.best
    with deferred():  # a signal waits for the epoch's files; best.pt before the last.pt
        _write_csv(os.path.join(out, "results.csv"), run.rows)  # that names its fitness
        plot_results(os.path.join(out, "results.csv"), os.path.join(out, "results.png"))
        if is_best:
            save_checkpoint(final, os.path.join(out, "best.pt"), epoch=epoch, best_fitness=run.best,
                            metrics=metrics)
        save_checkpoint(final, run.last, epoch=epoch, best_fitness=run.best, results=run.rows,
                        opt=dataclasses.asdict(cfg), train_model=state_tensors(run.raw_model),
                        optimizer=run.opt.state_dict(), scaler=run.scaler.state_dict(),
                        ema_updates=run.ema.updates if run.ema else 0, rng=dv.rng_state(),
                        hooks=[h.state_dict() for h in hooks], amp_dtype=amp_name(run.amp))
