"""The options of yolo_slim.tools.iterate, declared once: IterateOptions (prune_channels.py's
mask options, composed in, and the loop's own) is the flags, their checks, --help and the
recipe keys; --train FIELD=VALUE (a recipe's "train" object) passes training flags to every
fine-tune, each checked by train_sparse.py's own flag; check_targets refuses targets that
contradict each other; changed_options names what a rerun in the same folder would change."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from yolo_slim.core.cli import Parser, add_dataclass_args, field_default, flag_name, module_parser, parse
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.analysis.latency import TABLE_RUNTIMES
from yolo_slim.core.recipe import key_name
from yolo_slim.prune.cli import MaskOptions
from yolo_slim.train.config import KD_MODES, TrainConfig


@dataclass
class IterateOptions(MaskOptions):
    """The mask options of prune_channels.py (the same flags, checks and help) and the loop's."""
    rounds: int = field(default=3, metadata={"min": 1, "help": "rounds of prune -> fine-tune"})
    per_round_flops: float = field(default=0.8, metadata={
        "gt": 0, "lt": 1, "help": "each round cuts the current model to this share of its FLOPs"})
    epochs_per_round: int = field(default=2, metadata={"min": 1, "help": "fine-tuning epochs per round"})
    max_drop: float = field(default=0.05, metadata={
        "min": 0, "help": "stop after a round whose mAP@0.5 is more than this below the input's"})
    img_size: int = field(default=0, metadata={"min": 0, "help": "0: the cfg's width"})
    batch_size: int = field(default=16, metadata={"min": 1})
    eval_images: int = field(default=0, metadata={"min": 0, "help": "0: the whole validation list"})
    kd: str = field(default="none", metadata={
        "choices": list(KD_MODES), "help": "distil every fine-tune from the input model"})
    per_round_speedup: float = field(default=0.0, metadata={
        "min": 0, "help": "> 1: each round cuts to this measured speed-up instead of FLOPs (0: off)"})
    latency_table: str = field(default="", metadata={
        "help": "with a speed-up or latency target (default: measured once, cached, for cfg)"})
    runtime: str = field(default="onnxruntime", metadata={
        "choices": list(TABLE_RUNTIMES), "help": "the runtime the latency table is measured on "
                                                 "and every cut is timed on"})
    target_speedup: float = field(default=0.0, metadata={
        "min": 0, "help": "> 1: the whole run this much faster (measured); the rounds' speed-ups "
                          "derived (0: off)"})
    target_latency: float = field(default=0.0, metadata={
        "min": 0, "help": "> 0: the whole run down to this many measured ms (0: off)"})
    # extra TrainConfig fields for the fine-tunes: --train FIELD=VALUE, or an object in a recipe
    train: dict[str, Any] = field(default_factory=dict, metadata={"flag": False})


# TrainConfig fields the loop sets itself, per round
LOOP_FIELDS = ("cfg", "weights", "data", "resume", "output_dir", "epochs", "img_size",
               "batch_size", "eval_subset", "progress", "transfer", "weights_cfg")


def parse_train_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['lr0=0.002', 'workers=0', 'ema=false'] -> TrainConfig fields, each value checked by its
    training flag (type, range, choices: train_sparse.py's parser)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    p = Parser()
    TrainConfig.add_args(p)
    out: dict[str, Any] = {}
    for it in items:
        k, sep, v = it.partition("=")
        k = key_name(k.strip())
        if not sep or k not in fields:
            raise YoloSlimError(f"--train {it!r}: expected FIELD=VALUE with a training flag name")
        if k in LOOP_FIELDS:
            raise YoloSlimError(f"--train {k}=...: set by the iterative loop itself")
        if isinstance(field_default(fields[k]), bool):
            if v.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise YoloSlimError(f"--train {it!r}: bad value for {k}")
            out[k] = v.lower() in ("1", "true", "yes")
            continue
        flag = flag_name(k)
        try:
            ns = parse(p, [flag, *v.split(",")] if isinstance(field_default(fields[k]), list)
                       else [f"{flag}={v}"])
        except YoloSlimError as e:
            raise YoloSlimError(f"--train {it!r}: {e}") from None
        out[k] = getattr(ns, k)
    return out


def train_items(obj: Any) -> list[str]:
    """A recipe's "train" object ({"lr0": 0.002, "ema": false}) as --train FIELD=VALUE items,
    checked as those are."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object of training flags, got {json.dumps(obj)}")
    items = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else json.dumps(v).strip(chr(34))}"
             for k, v in obj.items()]
    parse_train_overrides(items)
    return items


def check_targets(opts: IterateOptions, given: Sequence[str] = ()) -> str | None:
    """The whole-run latency target's flag (None: none), refused beside the per-round cut it
    derives: with `given` (the flags of a command line), a --per-round-* flag given at all; else
    one set off its default."""
    whole = [k for k in ("target_speedup", "target_latency") if getattr(opts, k)]
    per = [k for k in ("per_round_flops", "per_round_speedup")
           if k in given or getattr(opts, k) != getattr(IterateOptions, k)]
    if len(whole) > 1:
        raise YoloSlimError("give --target-speedup or --target-latency, not both")
    if whole and per:
        raise YoloSlimError(f"{flag_name(whole[0])} derives each round's speed-up: give it without "
                            + " / ".join(map(flag_name, per)))
    if opts.target_speedup and not opts.target_speedup > 1 or opts.target_latency < 0:
        raise YoloSlimError("--target-speedup must be > 1 and --target-latency > 0 ms (or 0: off)")
    return flag_name(whole[0]) if whole else None


def parser() -> argparse.ArgumentParser:
    p = module_parser("python -m yolo_slim.tools.iterate", __doc__)
    add_dataclass_args(p, IterateOptions)
    a = p.add_argument("--train", action="append", default=[], metavar="FIELD=VALUE",
                       help="any train_sparse.py flag for the fine-tunes, e.g. lr0=0.002 (repeat)")
    a.recipe = train_items  # type: ignore[attr-defined]  # in a recipe: "train": {FIELD: VALUE}
    return p


def changed_options(saved: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """What differs between the iterate.json of a run and this command: ['--layer-keep 0.2
    (the run has 0.1)', ...]; inputs by flag, options by flag, --train fields as FIELD=."""
    out = [f"--{k} {mine[k]} (the run has {saved.get(k)})" for k in ("cfg", "weights", "data")
           if saved.get(k) != mine[k]]
    old, new = saved.get("options", {}), mine["options"]
    for k in new:
        if k == "train":
            out += [f"--train {t}={new[k].get(t)} (the run has {old.get(k, {}).get(t)})"
                    for t in sorted({*new[k], *old.get(k, {})}) if new[k].get(t) != old.get(k, {}).get(t)]
        elif json.dumps(old.get(k)) != json.dumps(new[k]):
            out.append(f"{flag_name(k)} {new[k]} (the run has {old.get(k)})")
    return out
