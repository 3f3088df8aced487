r"""Channel pruning by BN |γ| (or --importance l1|rank) with exact β folding; writes a darknet
cfg + weights.

  python prune_channels.py --cfg cfg/yolov3.cfg --weights sparse.weights --output-dir runs/p \
      --strategy slim --global-percent 0.5 --layer-keep 0.01 [--round-to 8] [--data x.data]
  python prune_channels.py ... --importance rank --data x.data --target-flops 0.5
  python prune_channels.py ... --layer-ratios runs/sens/ratios.json   # from yolo_slim.tools.sensitivity
  python prune_channels.py ... --target-latency 2.5 [--latency-threads 2]  # ms on onnxruntime CPU
`yolo-slim prune` and `python prune_channels.py` are this command.
"""
from __future__ import annotations

import os
from typing import Sequence

from yolo_slim.core.cli import Parser, add_dataclass_args, parse, write_resolved
from yolo_slim.core.errors import cli_main
from yolo_slim.prune.channels import summary_text
from yolo_slim.prune.cli import PruneFlags, channel_options, guard_run
from yolo_slim.prune.pipeline import latency_text, run_channels
from yolo_slim.tools.latency import for_script


def parser() -> Parser:
    """PruneFlags: the run's files, then the channel flags prune_layers.py shares; one target."""
    p = Parser(description=__doc__)
    add_dataclass_args(p, PruneFlags, required=("weights", "output_dir", "target"))
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    a = parse(parser(), argv)
    if a is None:  # --help
        return 0
    guard_run(a)  # before anything is written: no output may be an input
    opts, measure, table = for_script(a, channel_options(a))  # latency table + measured latency
    rep = run_channels(a.cfg, a.weights, a.output_dir, opts, data=a.data, batch_size=a.batch_size,
                       measure=measure, latency_table=table)
    write_resolved(os.path.join(a.output_dir, "args.json"), a)
    print(summary_text(rep))
    if measure:
        print(latency_text(rep))
    print("wrote", ", ".join(os.path.join(a.output_dir, f) for f in rep["files"].values()),
          "+ prune_report.json, channels.png, gamma_hist.png, args.json")
    return 0
