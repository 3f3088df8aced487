"""Command-line pieces shared by prune_channels.py and prune_layers.py: the channel-pruning flags
(the names users know from the darknet-pruning tools) and their mapping to PruneOptions."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..errors import YoloSlimError
from ..graph import STRATEGIES
from .channels import PruneOptions


def add_channel_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--strategy, one of --global-percent/--threshold/--target-flops, --layer-keep, --round-to."""
    p.add_argument("--strategy", choices=list(STRATEGIES), default="slim")
    what = p.add_mutually_exclusive_group(required=required)
    what.add_argument("--global-percent", type=float, help="fraction of prunable |γ| to cut")
    what.add_argument("--threshold", type=float, help="cut channels with |γ| < T")
    what.add_argument("--target-flops", type=float, help="at most F x the original FLOPs")
    p.add_argument("--layer-keep", type=float, default=0.0,
                   help="keep at least this fraction (and at least 1) of every layer")
    p.add_argument("--round-to", type=int, default=1, help="channel counts multiple of N")


def add_run_args(p: argparse.ArgumentParser, weights_required: bool = True) -> None:
    """--cfg --weights --output-dir --img-size --data --batch-size --seed."""
    p.add_argument("--cfg", help="darknet cfg (may be omitted for a yolo-slim .pt)")
    p.add_argument("--weights", required=weights_required, help=".weights or .pt")
    p.add_argument("--output-dir", required=weights_required)
    p.add_argument("--img-size", type=int, help="input size for FLOPs/verification (default: cfg)")
    p.add_argument("--data", help="darknet .data: report mAP before and after")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the verification input")


def wants_channels(a: argparse.Namespace) -> bool:
    return any(getattr(a, k) is not None for k in ("global_percent", "threshold", "target_flops"))


def channel_options(a: argparse.Namespace) -> PruneOptions:
    return PruneOptions(strategy=a.strategy, global_percent=a.global_percent,
                        threshold=a.threshold, target_flops=a.target_flops,
                        layer_keep=a.layer_keep, round_to=a.round_to,
                        img_size=(a.img_size, a.img_size) if a.img_size else None, seed=a.seed)


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | None:
    """parse_args, but a bad command line is a YoloSlimError (exit 2); None after --help."""
    try:
        return p.parse_args(argv)
    except SystemExit as e:  # argparse already printed the problem
        if e.code:
            raise YoloSlimError("bad command line (see above)") from None
        return None
