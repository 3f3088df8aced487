"""TrainConfig: every training flag as one dataclass field. core/cli.py turns the fields into
kebab-case flags (ranges from the metadata, checked at parse time) and back; the resolved config
is written as opt.json next to every run. DistillTrainConfig composes the distillation flags
(KDOptions) into it: they land in opt.json too, so --resume restores them and refuses a change."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from yolo_slim.analysis.latency import TABLE_RUNTIMES
from yolo_slim.core.cli import add_dataclass_args, from_args
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.nn.weights import read_checkpoint


@dataclass
class TrainConfig:
    """Every training flag; `--kebab-case` on the command line maps to the snake_case field."""
    cfg: str = field(default="", metadata={"help": "darknet cfg (optional with --resume)"})
    data: str = field(default="", metadata={"help": "darknet .data file"})
    weights: str = field(default="", metadata={"help": "start from these weights, epoch 0"})
    transfer: bool = field(default=False, metadata={
        "help": "--weights made for another cfg: copy the conv layers that fit (a .pt, or a "
                ".weights with --weights-cfg), or read a .weights as a prefix (darknet53.conv.74)"})
    weights_cfg: str = field(default="", metadata={
        "help": "--transfer: the cfg --weights was written for (e.g. COCO yolov3.cfg)"})
    resume: str = field(default="", metadata={"help": "continue a run: a last.pt, or no value "
                                              "= <output-dir>/last.pt", "nargs": "?", "const": "auto"})
    output_dir: str = "runs/train"
    # ranges (min/max/gt/lt/multiple_of) are checked when the flags are parsed: core/cli.py
    img_size: int = field(default=0, metadata={
        "help": "0: the cfg's [net] width; a multiple of the cfg's largest stride", "min": 0})
    batch_size: int = field(default=16, metadata={"help": "total over all DDP processes", "min": 1})
    nominal_batch: int = field(default=64, metadata={"help": "accumulate gradients to this", "min": 1})
    epochs: int = field(default=100, metadata={"min": 1})
    device: str = field(default="", metadata={"help": "cpu, cuda, cuda:N or '' (auto)"})
    workers: int = field(default=-1, metadata={
        "help": "loader processes; -1 = auto (0 on CPUs with <= 4 cores, see core/device.py)",
        "min": -1})
    seed: int = 0
    lr0: float = field(default=0.01, metadata={"gt": 0})
    lrf: float = field(default=0.01, metadata={"help": "final LR as a fraction of lr0", "min": 0})
    lr_schedule: str = field(default="cosine", metadata={"choices": ["cosine", "step"]})
    lr_steps: list = field(default_factory=lambda: [0.8, 0.9],
                           metadata={"help": "step schedule: fractions of --epochs"})
    momentum: float = field(default=0.937, metadata={"min": 0, "lt": 1})
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata={"min": 0})
    warmup_epochs: float = field(default=3.0, metadata={"min": 0})
    warmup_momentum: float = field(default=0.8, metadata={"min": 0, "lt": 1})
    warmup_bias_lr: float = field(default=0.1, metadata={"min": 0})
    clip_grad: float = field(default=0.0, metadata={"help": "max grad norm, 0 = off", "min": 0})
    ema: bool = True
    ema_decay: float = field(default=0.9999, metadata={"min": 0, "max": 1})
    ema_tau: float = field(default=2000.0, metadata={"gt": 0})
    amp: bool = field(default=True, metadata={
        "help": "mixed precision: fp16 on CUDA, bf16 on CPUs with AVX512-BF16/AMX, else off"})
    freeze_bn: bool = field(default=False, metadata={
        "help": "BN layers normalise with their running statistics and keep them (gamma, beta "
                "still train): for a pretrained model at small batches, whose batch statistics "
                "differ from its running ones"})
    multi_scale: bool = field(default=False, metadata={"help": "random size 0.5-1.5x per batch"})
    box: float = 3.2
    obj: float = 64.0
    cls: float = 32.0
    anchor_t: float = 4.0
    iou_obj: float = 1.0
    label_smoothing: float = 0.0
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    scale: float = 0.5
    translate: float = 0.1
    mosaic: float = 0.0
    eval_interval: int = field(default=1, metadata={"help": "evaluate every N epochs (+ last)",
                                                    "min": 1})
    eval_subset: int = field(default=0, metadata={"help": "evaluate on the first N images", "min": 0})
    conf_thres: float = field(default=0.001, metadata={"min": 0, "max": 1})
    iou_thres: float = field(default=0.6, metadata={"min": 0, "max": 1})
    progress: bool = True
    labels: str = field(default="files", metadata={
        "choices": ["files", "teacher"],
        "help": "training targets: the label files, or (label-free) the teacher's detections "
                "on each augmented batch; validation then scores agreement with the teacher"})
    teacher_conf: float = field(default=0.25, metadata={
        "min": 0, "max": 1, "help": "--labels teacher: a teacher detection with this score or "
                                    "more is a target"})
    # sparsity training: yolo_slim.train.sparsity builds the hook from these flags (the
    # engine only carries them, so that opt.json and --resume keep them)
    sr: bool = field(default=False, metadata={"help": "sparsity training (L1 on BN gamma)",
                                              "aliases": ("-sr",)})
    s: float = field(default=0.001, metadata={"help": "sparsity rate", "min": 0})
    prune: int = field(default=0, metadata={"help": "which BN layers --sr applies to"})
    sparsity: str = field(default="", metadata={"help": "sparsity schedule: constant, "
                                                "global-decay or local-decay"})
    sparsity_decay_start: float = field(default=0.5, metadata={
        "help": "decay schedules: fraction of the epochs after which s decays"})
    sparsity_decay_factor: float = field(default=0.01, metadata={
        "help": "decay schedules: s multiplier once decayed"})
    sparsity_keep_fraction: float = field(default=0.15, metadata={
        "help": "local-decay: share of channels (largest |gamma|) whose s decays"})
    sparsity_update: str = field(default="prox", metadata={
        "choices": ["prox", "subgradient"],
        "help": "prox: group soft-threshold on (gamma, beta) after each step, dead channels "
                "exactly 0; subgradient: s*sign(gamma) added to the gradient (older tools)"})
    sparsity_weight: str = field(default="auto", metadata={
        "choices": ["auto", "uniform", "flops", "latency"],
        "help": "what a channel costs, for the penalty: uniform (every channel alike), the "
                "FLOPs removing it saves, or the latency it saves by --latency-table; auto: "
                "latency with a latency target, else uniform"})
    latency_table: str = field(default="", metadata={
        "help": "--sparsity-weight latency, --target-speedup/--target-latency: the latency table (JSON of python -m "
                "yolo_slim.tools.latency; default: measured now or reused from the cache for this "
                "cfg at --img-size on --runtime, 2 threads)"})
    runtime: str = field(default="onnxruntime", metadata={
        "choices": list(TABLE_RUNTIMES),
        "help": "--target-speedup/--target-latency: the runtime the latency table is measured on "
                "when none is given; the compact model is timed on the table's runtime"})
    target_flops: float = field(default=0.0, metadata={
        "min": 0, "lt": 1, "help": "--sr prox: adapt s so the dead channels remove all but this "
                                   "share of the FLOPs (0 = off, fixed s)"})
    target_speedup: float = field(default=0.0, metadata={
        "min": 0, "help": "--sr prox: the dead channels make the model X times faster on the "
                          "latency table's runtime (predicted, corrected every epoch by timing "
                          "the compact model; 0 = off)"})
    target_latency: float = field(default=0.0, metadata={
        "min": 0, "help": "--sr prox: as --target-speedup, to MS milliseconds (0 = off)"})
    target_layer_keep: float = field(default=0.1, metadata={
        "min": 0, "max": 1, "help": "--target-flops: every conv keeps at least this share of its "
                                    "channels alive (and at least 1)"})
    target_kill: str = field(default="all", metadata={
        "choices": ["all", "path", "path-fold"],
        "help": "--target-flops: shrink every class the target needs from the first step "
                "(all), or fade out only those the FLOPs path needs by now (path: channels die "
                "one by one along it, as a pretrained model needs; path-fold: only gamma fades, "
                "the constant act(beta) left is folded into the next layers by the cut)"})
    target_importance: str = field(default="norm", metadata={
        "choices": ["norm", "taylor"],
        "help": "--target-flops: which classes go first: the smallest ||(gamma, beta)|| / cost "
                "(norm), or the smallest first-order loss change of zeroing them, summed over "
                "the run's steps (taylor: for a pretrained model, whose small gammas are not "
                "the unimportant channels)"})
    target_recover: float = field(default=0.3, metadata={
        "min": 0, "lt": 1, "help": "--target-flops: last share of the run with the dead set "
                                   "frozen and s = 0"})

    @classmethod
    def add_args(cls, p: argparse.ArgumentParser) -> None:
        add_dataclass_args(p, cls)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "TrainConfig":
        return from_args(cls, ns)


KD_MODES = ("none", "hinton", "chen")


@dataclass
class KDOptions:
    """The distillation flags of distill.py (train/distill.py reads them as a DistillConfig)."""
    t_cfg: str = field(default="", metadata={"help": "teacher cfg (optional for a .pt teacher)",
                                             "group": "distillation"})
    t_weights: str = field(default="", metadata={"help": "teacher weights (.weights or .pt)",
                                                 "group": "distillation"})
    kd: str = field(default="hinton", metadata={"choices": list(KD_MODES), "group": "distillation",
                                                "help": "none, hinton (binary KL on objectness and "
                                                        "classes) or chen (+ bounded box loss)"})
    temperature: float = field(default=2.0, metadata={"gt": 0, "group": "distillation"})
    kd_weight: float = field(default=1.0, metadata={"min": 0, "help": "weight of the KL term",
                                                    "group": "distillation"})
    box_weight: float = field(default=0.5, metadata={"min": 0, "help": "weight of chen's box term",
                                                     "group": "distillation"})
    margin: float = field(default=0.0, metadata={"min": 0, "help": "chen's margin (grid units²)",
                                                 "group": "distillation"})


@dataclass
class DistillTrainConfig(KDOptions, TrainConfig):
    """distill.py's flags: every training flag (first), then the distillation ones."""
    output_dir: str = "runs/distill"


RUNTIME_FIELDS = ("device", "workers", "resume", "progress")  # may change on --resume


def resume_config(cfg: TrainConfig) -> tuple[TrainConfig, str]:
    """The saved config of the run being resumed (runtime-only fields from `cfg`), of cfg's own
    class: a DistillTrainConfig gets its distillation options back too. A field the run did not
    save (a run from before it was composed in: KD options) is taken from `cfg`."""
    path = os.path.join(cfg.output_dir, "last.pt") if cfg.resume in ("auto", "1", "True") else cfg.resume
    saved = read_checkpoint(path).get("opt")
    if not saved:
        raise YoloSlimError(f"{path}: has no training state to resume (use --weights instead)")
    names = {f.name for f in dataclasses.fields(type(cfg))}
    if saved.get("sr") and "sparsity_update" not in saved:  # a run from before the prox step
        saved = {**saved, "sparsity_update": "subgradient"}
    composed = names - {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {**{k: getattr(cfg, k) for k in composed}, **saved}
    new = type(cfg)(**{k: v for k, v in saved.items() if k in names})
    for k in RUNTIME_FIELDS:
        setattr(new, k, getattr(cfg, k))
    return new, path
