"""Command-line pieces shared by prune_channels.py and prune_layers.py: the channel-pruning flags
(the names users know from the darknet-pruning tools) and their mapping to PruneOptions. The
generic parts (one-line parser errors, range-checked numbers, dataclass flags) are core/cli.py."""
from __future__ import annotations

import argparse
import json
import math
import sys

from yolo_slim.core.cli import number
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.analysis.graph import STRATEGIES
from yolo_slim.analysis.importance import IMPORTANCE
from yolo_slim.prune.channels import PruneOptions


def add_channel_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--strategy, one of --global-percent/--threshold/--target-flops/--layer-ratios,
    --layer-keep, --round-to, --importance, --rank-batches."""
    p.add_argument("--strategy", choices=list(STRATEGIES), default="slim")
    what = p.add_mutually_exclusive_group(required=required)
    what.add_argument("--global-percent", type=number(float, min=0, max=1),
                      help="fraction of prunable |γ| to cut")
    what.add_argument("--threshold", type=number(float, min=0), help="cut channels with |γ| < T")
    what.add_argument("--target-flops", type=number(float, gt=0, max=1),
                      help="at most F x the original FLOPs")
    what.add_argument("--layer-ratios", metavar="JSON",
                      help="per-conv fractions to cut, e.g. from yolo_slim.tools.sensitivity")
    what.add_argument("--target-latency", metavar="MS", type=number(float, gt=0),
                      help="widths predicted to run in MS ms on the latency table's runtime")
    what.add_argument("--target-speedup", metavar="X", type=number(float, min=1),
                      help="widths predicted to run X times faster than the unpruned model")
    what.add_argument("--dead", action="store_const", const=True, default=None,
                      help="cut exactly the channels with γ = β = 0 (train_sparse.py -sr "
                           "--sparsity-update prox leaves them): free, borders included")
    p.add_argument("--latency-table", metavar="JSON", help="use this latency table (default: "
                   "measure or reuse the cached one, python -m yolo_slim.tools.latency)")
    p.add_argument("--latency-threads", type=number(int, min=1), default=2,
                   help="onnxruntime threads of the table and of the measured latency")
    p.add_argument("--latency-rounds", type=number(int, min=0), default=3,
                   help="latency targets: measure the chosen widths and re-solve with the table's "
                        "target rescaled until the measured latency is within 5%% (at most N "
                        "re-solves; 0 = trust the table)")
    p.add_argument("--latency-report", action="store_true",
                   help="predict and measure the latency before/after also without a latency target")
    p.add_argument("--importance", choices=list(IMPORTANCE), default="bn",
                   help="channel score: BN |γ|, BN-scaled filter L1, or HRank (needs --data)")
    p.add_argument("--rank-batches", type=number(int, min=1), default=2, help="--importance rank: batches of --data")
    p.add_argument("--layer-keep", type=number(float, min=0, max=1), default=0.0,
                   help="keep at least this fraction (and at least 1) of every layer")
    p.add_argument("--round-to", type=round_to_arg, default=None,
                   help="channel counts multiple of N, or auto: the latency table's block where it "
                        "measured that alignment pays (default: auto with --dead, else 1)")


def round_to_arg(text: str) -> int | str:
    """--round-to N (>= 1) or auto."""
    return "auto" if text == "auto" else number(int, min=1)(text)


def add_run_args(p: argparse.ArgumentParser, weights_required: bool = True) -> None:
    """--cfg --weights --output-dir --img-size --data --batch-size --seed."""
    p.add_argument("--cfg", help="darknet cfg (may be omitted for a yolo-slim .pt)")
    p.add_argument("--weights", required=weights_required, help=".weights or .pt")
    p.add_argument("--output-dir", required=weights_required)
    p.add_argument("--img-size", type=number(int, min=1),
                   help="input size for FLOPs/verification (default: cfg)")
    p.add_argument("--data", help="darknet .data: report mAP before and after")
    p.add_argument("--batch-size", type=number(int, min=1), default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the verification input")


def wants_channels(a: argparse.Namespace) -> bool:
    return any(getattr(a, k, None) is not None
               for k in ("global_percent", "threshold", "target_flops", "layer_ratios",
                         "target_latency", "target_speedup", "dead"))


# what a sensitivity ratios.json records about the masks it measured, and the flag each is
RATIO_FILE_OPTIONS = {"strategy": "--strategy", "importance": "--importance",
                      "layer_keep": "--layer-keep", "round_to": "--round-to"}


def read_layer_ratios(path: str, flags: argparse.Namespace | None = None) -> dict[int, float]:
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


def channel_options(a: argparse.Namespace) -> PruneOptions:
    return PruneOptions(strategy=a.strategy, global_percent=a.global_percent,
                        threshold=a.threshold, target_flops=a.target_flops,
                        layer_keep=a.layer_keep,
                        round_to=a.round_to or ("auto" if getattr(a, "dead", None) else 1),
                        img_size=(a.img_size, a.img_size) if a.img_size else None, seed=a.seed,
                        importance=a.importance, rank_batches=a.rank_batches,
                        rank_data=getattr(a, "data", None),
                        layer_ratios=read_layer_ratios(a.layer_ratios, a) if a.layer_ratios else None,
                        rank_batch_size=getattr(a, "batch_size", 8),
                        target_latency=a.target_latency, target_speedup=a.target_speedup,
                        latency_table=a.latency_table, dead=getattr(a, "dead", None),
                        latency_rounds=getattr(a, "latency_rounds", 3))


def guard_run(a: argparse.Namespace) -> None:
    """Refuse a pruning run where a file it writes (prune/outputs.output_files) would be one of
    its inputs: --cfg, --weights, --data (+ its image lists), --layer-ratios."""
    from yolo_slim.core.paths import guard_outputs
    from yolo_slim.data.inputs import data_inputs
    from yolo_slim.prune.outputs import output_files, output_stem
    guard_outputs({"--cfg": a.cfg, "--weights": a.weights,
                   "--layer-ratios": getattr(a, "layer_ratios", None),
                   "--latency-table": getattr(a, "latency_table", None), **data_inputs(a.data)},
                  {"--output-dir": output_files(a.output_dir, output_stem(a.cfg, a.weights))})
