"""Channel pruning by BN |γ| with exact β folding; writes a darknet cfg + weights.

  python prune_channels.py --cfg cfg/yolov3.cfg --weights sparse.weights --output-dir runs/p \
      --strategy slim --global-percent 0.5 --layer-keep 0.01 [--round-to 8] [--data x.data]
"""
from __future__ import annotations

import argparse
import os
import sys

from yolo_slim.errors import YoloSlimError, cli_main
from yolo_slim.prune.channels import PruneOptions, run, summary_text


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", help="darknet cfg (may be omitted for a yolo-slim .pt)")
    p.add_argument("--weights", required=True, help=".weights or .pt")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--strategy", choices=["normal", "shortcut", "slim"], default="slim")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--global-percent", type=float, help="fraction of prunable |γ| to cut")
    what.add_argument("--threshold", type=float, help="cut channels with |γ| < T")
    what.add_argument("--target-flops", type=float, help="at most F x the original FLOPs")
    p.add_argument("--layer-keep", type=float, default=0.0,
                   help="keep at least this fraction (and at least 1) of every layer")
    p.add_argument("--round-to", type=int, default=1, help="channel counts multiple of N")
    p.add_argument("--img-size", type=int, help="input size for FLOPs/verification (default: cfg)")
    p.add_argument("--data", help="darknet .data: report mAP before and after")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the verification input")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    try:
        a = parse_args(argv)
    except SystemExit as e:  # argparse already printed the problem
        if e.code:
            raise YoloSlimError("bad command line (see above)") from None
        return 0
    opts = PruneOptions(strategy=a.strategy, global_percent=a.global_percent,
                        threshold=a.threshold, target_flops=a.target_flops,
                        layer_keep=a.layer_keep, round_to=a.round_to,
                        img_size=(a.img_size, a.img_size) if a.img_size else None, seed=a.seed)
    rep = run(a.cfg, a.weights, a.output_dir, opts, data=a.data, batch_size=a.batch_size)
    print(summary_text(rep))
    print("wrote", ", ".join(os.path.join(a.output_dir, f) for f in rep["files"].values()),
          "+ prune_report.json, channels.png, gamma_hist.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
