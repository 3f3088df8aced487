"""yolo-slim COMMAND [flags]: every command of the project under one name.

Each sub-command is the main function of a top-level script or of a `python -m` module, called
with the rest of the command line, so `yolo-slim prune ...`, `python prune_channels.py ...` and
`python -m yolo_slim.commands prune ...` are one command with one set of flags and the same
one-line errors (exit status 2).
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

from yolo_slim.core.errors import YoloSlimError, cli_main

# name -> (module whose main() runs it, what it does); the order is the one --help lists
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("yolo_slim.commands.train", "train a detector; -sr: sparsity training (train_sparse.py)"),
    "prune": ("yolo_slim.commands.prune", "channel pruning with exact beta folding (prune_channels.py)"),
    "prune-layers": ("yolo_slim.commands.prune_layers", "remove residual blocks, then optionally "
                     "channels (prune_layers.py)"),
    "distill": ("yolo_slim.commands.distill", "fine-tune a pruned student, distilling from a "
                "teacher (distill.py)"),
    "export": ("yolo_slim.commands.export", "write .weights, .pt or ONNX (FP32 / INT8) (export.py)"),
    "evaluate": ("yolo_slim.commands.evaluate", "P, R, mAP on a .data file's valid list (evaluate.py)"),
    "detect": ("yolo_slim.commands.detect", "draw a detector's boxes on images (detect.py)"),
    "latency": ("yolo_slim.tools.latency", "measure a cfg's latency table on a runtime"),
    "latency-table": ("yolo_slim.analysis.latency", "print (and plot) a measured latency table"),
    "graph": ("yolo_slim.analysis.graph", "print a cfg's channel graph"),
    "blocks": ("yolo_slim.prune.layers", "list a cfg's removable residual blocks"),
    "sensitivity": ("yolo_slim.tools.sensitivity", "per-layer pruning sensitivity, and the cuts "
                    "for a FLOPs or latency target"),
    "iterate": ("yolo_slim.tools.iterate", "iterative pruning: cut, fine-tune, repeat"),
    "unstructured": ("yolo_slim.tools.unstructured", "unstructured magnitude pruning, beside "
                     "channel pruning"),
    "report": ("yolo_slim.report.pipeline_report", "REPORT.md of a pipeline run folder"),
    "pipeline": ("yolo_slim.commands.pipeline", "a flow's stages (the demo's, make slim's) from a recipe into a run folder: "
                 "finished ones skipped, an interrupted one resumed, commands.txt (make demo)"),
    "zoo": ("yolo_slim.darknet.zoo", "write the standard darknet cfgs"),
    "synthetic": ("yolo_slim.data.synthetic", "write the synthetic shapes data set"),
    "real-assets": ("yolo_slim.data.real_assets", "prepare the real assets from the download cache"),
    "darknet-parity": ("yolo_slim.tools.darknet_parity", "detections against real darknet's "
                       "recorded ones"),
}
PROG = "yolo-slim"


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join([f"usage: {PROG} COMMAND [flags]   ({PROG} COMMAND --help: its flags)", "",
                      "commands:", *(f"  {n:<{width}}  {what}" for n, (_, what) in COMMANDS.items())])


def command_main(name: str) -> Callable[[Sequence[str] | None], int]:
    """The main function `yolo-slim NAME` runs (the script's or module's own)."""
    if name not in COMMANDS:
        raise YoloSlimError(f"unknown command {name!r}; one of: {', '.join(COMMANDS)} "
                            f"({PROG} --help says what each does)")
    return importlib.import_module(COMMANDS[name][0]).main


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not args:
        raise YoloSlimError(f"give a command: {PROG} COMMAND [flags] ({PROG} --help lists them)")
    run = command_main(args[0])
    # argparse names the program after sys.argv[0]: usage lines read "yolo-slim prune ..."
    argv0, sys.argv[0] = sys.argv[0], f"{PROG} {args[0]}"
    try:
        return run(args[1:])
    finally:
        sys.argv[0] = argv0
