"""Evaluate a detector on the valid split of a darknet .data file: P, R, mAP@.5, mAP@.5:.95.

  python evaluate.py --cfg cfg/tiny.cfg --weights runs/x/best.pt --data data/shapes/shapes.data
  python evaluate.py --onnx runs/x/model.int8.onnx --data data/shapes/shapes.data
  python evaluate.py --model-file runs/x/model.xml --data data/shapes/shapes.data  # OpenVINO
  python evaluate.py --weights slim.weights --cfg slim.cfg --data frames.data \
      --reference yolov3-tiny.weights --reference-cfg yolov3-tiny.cfg   # agreement, no labels
--onnx (or its other name --model-file) scores an exported file (FP32 or INT8) in the runtime
its suffix names (.onnx onnxruntime, .xml OpenVINO, .param ncnn) through the same letterbox, NMS
and mAP as the torch path (the input size comes from the file; a --raw export needs --cfg).
Writes <output-dir>/metrics.json and prints the per-class table.
`yolo-slim evaluate` and `python evaluate.py` are this command.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

from yolo_slim.commands.detect import PREPROCESS, ModelFlags
from yolo_slim.core.cli import Parser, add_dataclass_args
from yolo_slim.core.errors import atomic_write_bytes, cli_main


@dataclass
class EvaluateFlags(ModelFlags):
    """Every flag of evaluate.py."""
    weights: str | None = field(default=None, metadata={
        "type": str, "exclusive": "model", "help": ".weights or .pt (the torch model)"})
    onnx: str | None = field(default=None, metadata={
        "type": str, "exclusive": "model", "aliases": ("--model-file",), "metavar": "FILE",
        "help": "an exported file, FP32 or INT8, run in its runtime: .onnx (onnxruntime), "
                ".xml (OpenVINO IR), .param (ncnn)"})
    data: str | None = field(default=None, metadata={"type": str, "help": "darknet .data file"})
    split: str = field(default="valid", metadata={"choices": ["valid", "train"]})
    img_size: int | None = field(default=None, metadata={
        "type": int, "min": 1, "help": "default 416; with --onnx the file's input size"})
    batch_size: int = field(default=16, metadata={"min": 1})
    conf_thres: float = field(default=0.001, metadata={"min": 0, "max": 1})
    iou_thres: float = field(default=0.6, metadata={"min": 0, "max": 1, "help": "NMS IoU threshold"})
    half: bool = field(default=False, metadata={"switch": True, "help": "fp16 inference (CUDA only)"})
    rect: bool = field(default=False, metadata={"switch": True, "help": "rectangular batches (less padding)"})
    preprocess: str = field(default="letterbox", metadata={
        "choices": PREPROCESS, "help": "how images become inputs (as detect.py; docs/preprocessing.md)"})
    workers: int = field(default=-1, metadata={
        "min": -1, "help": "loader processes; -1 = auto (0 on CPUs with <= 4 cores)"})
    reference: str = field(default="", metadata={
        "help": "score against this model's detections instead of the labels (.weights/.pt): "
                "*agreement*, not accuracy; needs no label files"})
    reference_cfg: str = field(default="", metadata={"help": "cfg of --reference (optional for a .pt)"})
    reference_conf: float = field(default=0.25, metadata={
        "min": 0, "max": 1, "help": "--reference: its detections with this score or more are the truth"})
    output_dir: str = "runs/evaluate"


def parser() -> Parser:
    p = Parser(description=__doc__)
    add_dataclass_args(p, EvaluateFlags, required=("model", "data"))
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    from yolo_slim.core.cli import parse
    return parse(parser(), argv)


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
    if "runtime" in m:
        print(f"{args.onnx}: run in {m['runtime']}, {m['inference_precision']}")
    print(format_metrics(m, agreement=bool(args.reference)))
    ensure_dir(args.output_dir)
    # metrics.json carries the resolved flags itself ("args"), as it always has
    atomic_write_bytes(out, json.dumps({"args": resolved(args), **m}, indent=1).encode())
    print(f"wrote {out}")
    return 0
