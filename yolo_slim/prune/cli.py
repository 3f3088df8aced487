"""The pruning tools' options, declared once as dataclasses (core/cli.py makes them the flags,
range checks, --help and recipe keys): what cuts the masks (MaskOptions: prune, prune-layers,
sensitivity and iterate share it), the targets (ShareTargets, TargetOptions), the channel flags
of prune_channels.py (ChannelFlags) and its run (PruneRunFlags), and their mapping to the
pruner's PruneOptions. prune_layers.py adds its own to PruneFlags."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from yolo_slim.core.cli import number
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.analysis.graph import STRATEGIES
from yolo_slim.analysis.importance import IMPORTANCE
from yolo_slim.analysis.latency import TABLE_RUNTIMES
from yolo_slim.prune.channels import TARGETS, PruneOptions


@dataclass
class MaskOptions:
    """How a cut is made, whatever decides its size."""
    strategy: str = field(default="slim", metadata={
        "choices": list(STRATEGIES), "help": "which convs may lose channels: normal (none that "
                                             "meets a shortcut), shortcut or slim (all)"})
    importance: str = field(default="bn", metadata={
        "choices": list(IMPORTANCE), "help": "channel score: BN |γ|, BN-scaled filter L1, or "
                                             "HRank (needs --data)"})
    rank_batches: int = field(default=2, metadata={"min": 1, "help": "--importance rank: batches of --data"})
    layer_keep: float = field(default=0.0, metadata={
        "min": 0, "max": 1, "help": "keep at least this fraction (and at least 1) of every layer"})
    round_to: int = field(default=1, metadata={"min": 1, "help": "channel counts multiple of N"})


@dataclass
class ShareTargets:
    """Cuts sized by the |γ| ranking."""
    global_percent: float | None = field(default=None, metadata={
        "type": float, "min": 0, "max": 1, "exclusive": "target",
        "help": "fraction of prunable |γ| to cut"})
    threshold: float | None = field(default=None, metadata={
        "type": float, "min": 0, "exclusive": "target", "help": "cut channels with |γ| < T"})


@dataclass
class TargetOptions:
    """Cuts sized by what the model costs: FLOPs, or latency on the latency table's runtime."""
    target_flops: float | None = field(default=None, metadata={
        "type": float, "gt": 0, "max": 1, "exclusive": "target",
        "help": "at most F x the original FLOPs"})
    target_latency: float | None = field(default=None, metadata={
        "type": float, "gt": 0, "exclusive": "target", "metavar": "MS",
        "help": "widths predicted to run in MS ms on the latency table's runtime"})
    target_speedup: float | None = field(default=None, metadata={
        "type": float, "min": 1, "exclusive": "target", "metavar": "X",
        "help": "widths predicted to run X times faster than the unpruned model"})
    latency_table: str | None = field(default=None, metadata={
        "type": str, "metavar": "JSON", "help": "use this latency table (default: measure or "
                                                "reuse the cached one, python -m yolo_slim.tools.latency)"})
    runtime: str = field(default="onnxruntime", metadata={
        "choices": list(TABLE_RUNTIMES),
        "help": "the runtime the latency table is measured on (when none is given) and a cut is "
                "timed on: the table's own runtime when --latency-table is given"})


def round_to_arg(text: str) -> int | str:
    """--round-to N (>= 1) or auto."""
    return "auto" if text == "auto" else number(int, min=1)(text)


@dataclass
class ChannelFlags(TargetOptions, ShareTargets, MaskOptions):
    """prune_channels.py's channel flags (prune_layers.py's too, for its combined mode)."""
    round_to: int | str | None = field(default=None, metadata={
        "type": round_to_arg, "help": "channel counts multiple of N, or auto: the latency "
                                      "table's block where it measured that alignment pays "
                                      "(default: auto with --dead, else 1)"})
    layer_ratios: str | None = field(default=None, metadata={
        "type": str, "metavar": "JSON", "exclusive": "target",
        "help": "per-conv fractions to cut, e.g. from yolo_slim.tools.sensitivity"})
    dead: bool = field(default=False, metadata={
        "exclusive": "target", "switch": True, "help": "cut exactly the channels with γ = β = 0 (train_sparse.py "
                                       "-sr --sparsity-update prox leaves them): free, borders included"})
    latency_threads: int = field(default=2, metadata={
        "min": 1, "help": "runtime threads of the table and of the measured latency"})
    latency_rounds: int = field(default=3, metadata={
        "min": 0, "help": "latency targets: measure the chosen widths and re-solve with the "
                          "table's target rescaled until the measured latency is within 5%% (at "
                          "most N re-solves; 0 = trust the table)"})
    latency_report: bool = field(default=False, metadata={
        "help": "predict and measure the latency before/after also without a latency target"})


@dataclass
class PruneRunFlags:
    """What a pruning run reads and writes."""
    cfg: str | None = field(default=None, metadata={
        "type": str, "help": "darknet cfg (may be omitted for a yolo-slim .pt)"})
    weights: str | None = field(default=None, metadata={"type": str, "help": ".weights or .pt"})
    output_dir: str | None = field(default=None, metadata={"type": str})
    img_size: int | None = field(default=None, metadata={
        "type": int, "min": 1, "help": "input size for FLOPs/verification (default: cfg)"})
    data: str | None = field(default=None, metadata={
        "type": str, "help": "darknet .data: report mAP before and after"})
    batch_size: int = field(default=8, metadata={"min": 1})
    seed: int = field(default=0, metadata={"help": "seed of the verification input"})


@dataclass
class PruneFlags(ChannelFlags, PruneRunFlags):
    """Every flag of prune_channels.py."""


def wants_channels(a: Any) -> bool:
    """Whether the flags name a channel cut (one of the pruner's TARGETS, the group "target")."""
    return any(getattr(a, k, None) not in (None, False) for k in TARGETS)


# what a sensitivity ratios.json records about the masks it measured, and the flag each is
RATIO_FILE_OPTIONS = {"strategy": "--strategy", "importance": "--importance",
                      "layer_keep": "--layer-keep", "round_to": "--round-to"}


def read_layer_ratios(path: str, flags: Any = None) -> dict[int, float]:
    """{"layers": {"12": 0.3, ...}} (what yolo_slim.tools.sensitivity writes) or a flat {"12": 0.3}.
    With `flags`, warn (stderr) where the file's recorded mask options differ from them: the
    masks would not be the ones the sensitivity analysis measured."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # BOM-safe
            obj = json.load(f)
    except FileNotFoundError:
        raise YoloSlimError(f"--layer-ratios: file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise YoloSlimError(f"--layer-ratios: {path}: not valid JSON ({e})") from None
    if isinstance(obj, dict) and flags is not None:
        given = {k: getattr(flags, k, obj.get(k)) for k in RATIO_FILE_OPTIONS}
        given["round_to"] = given["round_to"] or 1  # unset: 1 (auto only with --dead)
        diff = [f"{flag} {given[k]} (file: {obj[k]})" for k, flag in RATIO_FILE_OPTIONS.items()
                if k in obj and given[k] != obj[k]]
        if diff:
            print(f"warning: --layer-ratios {path} was chosen with other mask options than "
                  f"these: {', '.join(diff)}", file=sys.stderr)
    obj = obj.get("layers", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict):
        raise YoloSlimError(f"--layer-ratios: {path}: expected an object of layer -> ratio")
    out = {}
    for k, v in obj.items():
        try:
            i, r = int(k), float(v)
        except (TypeError, ValueError):
            raise YoloSlimError(f"--layer-ratios: {path}: bad entry {k!r}: {v!r}") from None
        if not 0.0 <= r <= 1.0 or math.isnan(r):
            raise YoloSlimError(f"--layer-ratios: {path}: layer {i}: ratio {r} is not in [0, 1]")
        out[i] = r
    return out


def channel_options(a: Any) -> PruneOptions:
    """The pruner's options from the flags (parsed, or a PruneFlags): the same names carry
    over; --img-size, --round-to's default, --layer-ratios' file and --data need a word."""
    same = {f.name for f in dataclasses.fields(PruneOptions)} & {f.name for f in dataclasses.fields(ChannelFlags)}
    same -= {"round_to", "layer_ratios", "dead"}
    return PruneOptions(**{k: getattr(a, k) for k in same},
                        round_to=a.round_to or ("auto" if a.dead else 1),
                        img_size=(a.img_size, a.img_size) if a.img_size else None, seed=a.seed,
                        rank_data=a.data, rank_batch_size=a.batch_size,
                        layer_ratios=read_layer_ratios(a.layer_ratios, a) if a.layer_ratios else None,
                        dead=True if a.dead else None)


def guard_run(a: Any) -> None:
    """Refuse a pruning run where a file it writes (prune/outputs.output_files) would be one of
    its inputs: --cfg, --weights, --data (+ its image lists), --layer-ratios."""
    from yolo_slim.core.paths import guard_outputs
    from yolo_slim.data.inputs import data_inputs
    from yolo_slim.prune.outputs import output_files, output_stem
    guard_outputs({"--cfg": a.cfg, "--weights": a.weights,
                   "--layer-ratios": getattr(a, "layer_ratios", None),
                   "--latency-table": getattr(a, "latency_table", None), **data_inputs(a.data)},
                  {"--output-dir": output_files(a.output_dir, output_stem(a.cfg, a.weights))})
