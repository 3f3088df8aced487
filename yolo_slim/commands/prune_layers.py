r"""Layer pruning: remove the N residual blocks ([shortcut] + its two convs) with the smallest
|γ| of the conv before the shortcut, fold their constant output exactly, renumber routes; with
channel flags, prune channels of the result in the same run.

  python prune_layers.py --cfg cfg/yolov3.cfg --weights sparse.weights --output-dir runs/l \
      --shortcuts 12 [--rank mean|max] [--global-percent 0.5 --strategy slim --layer-keep 0.01]
  python prune_layers.py --cfg cfg/yolov4.cfg [--weights w] --list    # removable blocks, scores
`yolo-slim prune-layers` and `python prune_layers.py` are this command.
"""
from __future__ import annotations

import os
from typing import Sequence

from dataclasses import dataclass, field

from yolo_slim.core.cli import Parser, add_dataclass_args, parse, write_resolved
from yolo_slim.core.errors import YoloSlimError, cli_main
from yolo_slim.prune.cli import PruneFlags, channel_options, guard_run, wants_channels


@dataclass
class PruneLayersFlags(PruneFlags):
    """prune_channels.py's flags (a channel target optional: the combined mode) and the blocks'."""
    shortcuts: int | None = field(default=None, metadata={
        "type": int, "min": 1, "help": "number of residual blocks to remove"})
    rank: str = field(default="mean", metadata={"choices": ["mean", "max"],
                                                "help": "|γ| statistic per block"})
    list: bool = field(default=False, metadata={"switch": True,
                                                "help": "print the removable blocks and exit"})


def parser() -> Parser:
    p = Parser(description=__doc__)
    add_dataclass_args(p, PruneLayersFlags)
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    a = parse(parser(), argv)
    if a is None:
        return 0
    from yolo_slim.prune.layer_run import summary_text
    from yolo_slim.prune.layers import blocks_text
    if a.list:
        if not a.cfg and not a.weights:
            raise YoloSlimError("--list needs --cfg (and --weights for the |γ| scores)")
        from yolo_slim.darknet.cfg import parse_cfg
        from yolo_slim.nn.weights import load_model
        model = load_model(a.cfg, a.weights) if a.weights else None
        print(blocks_text(model.module_defs if model else parse_cfg(a.cfg), model, a.rank))
        return 0
    for flag in ("weights", "output_dir", "shortcuts"):
        if getattr(a, flag) is None:
            raise YoloSlimError(f"--{flag.replace('_', '-')} is required (or use --list)")
    guard_run(a)  # before anything is written: no output may be an input
    from yolo_slim.prune.pipeline import latency_text, run_layers
    from yolo_slim.tools.latency import for_script  # latency table + measured latency
    opts, measure, table = for_script(a, channel_options(a) if wants_channels(a) else None)
    rep = run_layers(a.cfg, a.weights, a.output_dir, a.shortcuts, a.rank, opts, a.img_size, a.seed,
                     data=a.data, batch_size=a.batch_size, measure=measure, latency_table=table)
    write_resolved(os.path.join(a.output_dir, "args.json"), a)
    print(summary_text(rep))
    if measure:
        print(latency_text(rep))
    print("wrote", ", ".join(os.path.join(a.output_dir, f) for f in rep["files"].values()),
          "+ prune_report.json, layers.png" + (", channels.png" if wants_channels(a) else "") + ", args.json")
    return 0
