"""Evaluate a detector on the valid split of a darknet .data file: P, R, mAP@.5, mAP@.5:.95.

  python evaluate.py --cfg cfg/tiny.cfg --weights runs/x/best.pt --data data/shapes/shapes.data
  python evaluate.py --onnx runs/x/model.int8.onnx --data data/shapes/shapes.data
  python evaluate.py --weights slim.weights --cfg slim.cfg --data frames.data \
      --reference yolov3-tiny.weights --reference-cfg yolov3-tiny.cfg   # agreement, no labels
--onnx scores an exported file (FP32 or INT8) in onnxruntime through the same letterbox, NMS and
mAP as the torch path (the input size comes from the file; a --raw export needs --cfg).
Writes <output-dir>/metrics.json and prints the per-class table.
`yolo-slim evaluate` and `python evaluate.py` are this command.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

from yolo_slim.core.errors import atomic_write_bytes, cli_main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    from yolo_slim.core.cli import Parser, number, parse
    p = Parser(description=__doc__)
    p.add_argument("--cfg", help="darknet cfg (optional when --weights is a yolo-slim .pt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help=".weights or .pt (the torch model)")
    src.add_argument("--onnx", help="an exported .onnx file, run in onnxruntime (FP32 or INT8)")
    p.add_argument("--data", required=True, help="darknet .data file")
    p.add_argument("--split", choices=["valid", "train"], default="valid")
    p.add_argument("--img-size", type=number(int, min=1),
                   help="default 416; with --onnx the file's input size")
    p.add_argument("--batch-size", type=number(int, min=1), default=16)
    p.add_argument("--conf-thres", type=number(float, min=0, max=1), default=0.001)
    p.add_argument("--iou-thres", type=number(float, min=0, max=1), default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=number(int, min=1), default=300)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N or N (default: cuda if any)")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    p.add_argument("--rect", action="store_true", help="rectangular batches (less padding)")
    p.add_argument("--preprocess", choices=["letterbox", "darknet", "resize"], default="letterbox",
                   help="how images become inputs (as detect.py; docs/preprocessing.md)")
    p.add_argument("--workers", type=number(int, min=-1), default=-1,
                   help="loader processes; -1 = auto (0 on CPUs with <= 4 cores)")
    p.add_argument("--reference", default="",
                   help="score against this model's detections instead of the labels "
                        "(.weights/.pt): *agreement*, not accuracy; needs no label files")
    p.add_argument("--reference-cfg", default="", help="cfg of --reference (optional for a .pt)")
    p.add_argument("--reference-conf", type=number(float, min=0, max=1), default=0.25,
                   help="--reference: its detections with this score or more are the truth")
    p.add_argument("--output-dir", default="runs/evaluate")
    return parse(p, argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args is None:  # --help
        return 0
    from yolo_slim.core.cli import resolved
    from yolo_slim.core.paths import ensure_dir, guard_outputs
    from yolo_slim.data.inputs import data_inputs
    from yolo_slim.eval.evaluate import format_metrics
    out = os.path.join(args.output_dir, "metrics.json")
    guard_outputs({"--cfg": args.cfg, "--weights": args.weights, "--onnx": args.onnx,
                   "--reference": args.reference, "--reference-cfg": args.reference_cfg,
                   **data_inputs(args.data)}, {"--output-dir": [out]})
    from yolo_slim.tools.score import score
    m = score(args)
    if args.reference:  # never shown as accuracy
        print(f"AGREEMENT with {args.reference} (its detections with score >= "
              f"{args.reference_conf} as the truth; not accuracy):")
    m["preprocess"] = args.preprocess  # which input preprocessing scored the model
    print(format_metrics(m, agreement=bool(args.reference)))
    ensure_dir(args.output_dir)
    # metrics.json carries the resolved flags itself ("args"), as it always has
    atomic_write_bytes(out, json.dumps({"args": resolved(args), **m}, indent=1).encode())
    print(f"wrote {out}")
    return 0
