"""Convert a model: darknet .weights <-> .pt checkpoint, or export ONNX for deployment.

  python export.py --cfg cfg/yolov3.cfg --weights yolov3.weights --format pt --output y.pt
  python export.py --cfg cfg/yolov3.cfg --weights y.pt --format weights --output y.weights
  python export.py --cfg cfg/yolov3.cfg --weights yolov3.weights --format onnx --img-size 416
  python export.py --weights ft.pt --format onnx --img-size 416 --int8 --calib-data my.data
--int8: onnxruntime static quantization (QDQ, per-channel int8 weights) calibrated on letterboxed
images of --calib-data; the box-decode tail stays in float; the INT8 detections are compared
with FP32 on the calibration images (yolo_slim/deploy/quantize.py).
`yolo-slim export` and `python export.py` are this command.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

from yolo_slim.core.cli import Parser, add_dataclass_args
from yolo_slim.core.errors import YoloSlimError, cli_main

INT8 = "INT8 (with --format onnx)"


@dataclass
class ExportFlags:
    """Every flag of export.py."""
    cfg: str | None = field(default=None, metadata={
        "type": str, "help": "darknet cfg (optional when --weights is a yolo-slim .pt)"})
    weights: str | None = field(default=None, metadata={"type": str, "help": ".weights or .pt"})
    format: str | None = field(default=None, metadata={"type": str, "choices": ["weights", "pt", "onnx"]})
    output: str | None = field(default=None, metadata={
        "type": str, "help": "output file (default: next to --weights, new extension); the "
                             "resolved flags go to <output>.args.json"})
    img_size: list[int] = field(default_factory=lambda: [416], metadata={
        "item": int, "min": 1, "help": "S or H W (onnx): multiples of the cfg's largest stride"})
    batch_size: int = field(default=1, metadata={
        "min": 1, "help": "onnx: trace batch; the fixed batch with --static"})
    opset: int = field(default=18, metadata={"min": 7})
    static: bool = field(default=False, metadata={"switch": True, "help": "fixed batch size in the onnx graph"})
    raw: bool = field(default=False, metadata={"switch": True, "help": "export the raw head maps, not boxes"})
    nms: bool = field(default=False, metadata={"switch": True, "help": "put NonMaxSuppression into the graph"})
    conf_thres: float = field(default=0.25, metadata={"min": 0, "max": 1, "help": "with --nms"})
    iou_thres: float = field(default=0.45, metadata={"min": 0, "max": 1, "help": "with --nms"})
    max_det: int = field(default=300, metadata={"min": 1, "help": "with --nms"})
    tol: float = field(default=1e-3, metadata={
        "gt": 0, "help": "max |onnxruntime - torch| / max(1, |torch|) allowed"})
    int8: bool = field(default=False, metadata={
        "switch": True, "group": INT8, "help": "quantize to INT8 (default output <stem>.int8.onnx)"})
    calib_data: str | None = field(default=None, metadata={
        "type": str, "group": INT8, "help": "darknet .data file whose images calibrate the INT8 ranges"})
    calib_images: int = field(default=100, metadata={
        "min": 1, "group": INT8, "help": "images taken evenly from the list"})
    calib_split: str = field(default="train", metadata={"choices": ["train", "valid"], "group": INT8})
    calib_method: str = field(default="minmax", metadata={
        "choices": ["minmax", "entropy", "percentile"], "group": INT8})
    per_tensor: bool = field(default=False, metadata={
        "switch": True, "group": INT8, "help": "one weight scale per tensor, not per channel"})
    min_match: float = field(default=0.5, metadata={
        "min": 0, "max": 1, "group": INT8,
        "help": "refuse an INT8 model that finds fewer of the FP32 detections (0: never)"})


def parser() -> Parser:
    p = Parser(description=__doc__)
    add_dataclass_args(p, ExportFlags, required=("weights", "format"))
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    from yolo_slim.core.cli import parse
    p = parser()
    a = parse(p, argv)
    if a is not None and a.int8 and (a.format != "onnx" or not a.calib_data):
        raise YoloSlimError("--int8 needs --format onnx and --calib-data")
    if a is not None and len(a.img_size) > 2:
        raise YoloSlimError(f"--img-size takes S or H W, got {len(a.img_size)} numbers")
    return a


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args is None:  # --help
        return 0
    from yolo_slim.core.cli import write_resolved
    from yolo_slim.core.paths import guard_outputs
    from yolo_slim.nn.weights import load_model, save_checkpoint, save_darknet_weights
    ext = {"weights": ".weights", "pt": ".pt", "onnx": ".onnx"}[args.format]
    out = args.output or os.path.splitext(args.weights)[0] + (".int8" if args.int8 else "") + ext
    resolved_json = out + ".args.json"
    guard_outputs({"--cfg": args.cfg, "--weights": args.weights, "--calib-data": args.calib_data},
                  {"--output": [out, resolved_json] + ([out + ".quant.json"] if args.int8 else [])})
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise YoloSlimError(f"--output {out}: directory does not exist")
    model = load_model(args.cfg, args.weights)
    if args.format == "weights":
        save_darknet_weights(model, out)
    elif args.format == "pt":
        save_checkpoint(model, out)
    elif args.int8:
        from yolo_slim.deploy.quantize import QuantOptions, export_int8, format_parity
        q = QuantOptions(calib_method=args.calib_method, calib_images=args.calib_images,
                         calib_split=args.calib_split, per_channel=not args.per_tensor,
                         min_match=args.min_match)
        r = export_int8(model, out, args, args.calib_data, q)
        print(f"onnx check (FP32 before quantization): max |delta| vs torch = "
              f"{r['fp32_check']['max_abs_delta']:.3g}")
        print(format_parity(r))
    else:
        from yolo_slim.deploy.export import export_onnx
        r = export_onnx(model, out, args)
        print(f"onnx check: onnxruntime vs torch on a batch of {r['check_batch']}: "
              f"max |delta| = {r['max_abs_delta']:.3g} (relative {r['max_rel_delta']:.3g}); "
              f"outputs {', '.join(r['outputs'])}, opset {r['opset']}")
    write_resolved(resolved_json, args, output=out)
    print(f"wrote {out}")
    return 0
