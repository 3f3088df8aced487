"""Convert a model: darknet .weights <-> .pt checkpoint, or export it for a runtime: ONNX
(onnxruntime), OpenVINO IR (.xml + .bin) or ncnn (.param + .bin), each checked against PyTorch
in its own runtime before it is written (docs/runtimes.md).

  python export.py --cfg cfg/yolov3.cfg --weights yolov3.weights --format pt --output y.pt
  python export.py --cfg cfg/yolov3.cfg --weights y.pt --format weights --output y.weights
  python export.py --cfg cfg/yolov3.cfg --weights yolov3.weights --format onnx --img-size 416
  python export.py --weights ft.pt --format openvino --img-size 416          # ft.xml + ft.bin
  python export.py --weights ft.pt --format onnx --img-size 416 --int8 --calib-data my.data
--int8 (onnx, openvino): post-training quantization calibrated on letterboxed images of
--calib-data (onnxruntime static QDQ: deploy/quantize.py; NNCF: deploy/openvino_int8.py); the
box-decode tail stays in float; the INT8 detections are compared with FP32 on the calibration
images and a model that finds fewer than --min-match of them is not written.
`yolo-slim export` and `python export.py` are this command.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

from yolo_slim.core.cli import Parser, add_dataclass_args
from yolo_slim.core.errors import YoloSlimError, cli_main
from yolo_slim.deploy.backends import FORMATS, INT8 as INT8_RUNTIMES

INT8 = "INT8 (with --format onnx or openvino)"


@dataclass
class ExportFlags:
    """Every flag of export.py."""
    cfg: str | None = field(default=None, metadata={
        "type": str, "help": "darknet cfg (optional when --weights is a yolo-slim .pt)"})
    weights: str | None = field(default=None, metadata={"type": str, "help": ".weights or .pt"})
    format: str | None = field(default=None, metadata={
        "type": str, "choices": ["weights", "pt", *FORMATS],
        "help": "onnx: onnxruntime; openvino: IR .xml + .bin; ncnn: .param + .bin"})
    output: str | None = field(default=None, metadata={
        "type": str, "help": "output file (default: next to --weights, new extension); the "
                             "resolved flags go to <output>.args.json"})
    img_size: list[int] = field(default_factory=lambda: [416], metadata={
        "item": int, "min": 1, "help": "S or H W (runtime formats): multiples of the cfg's largest stride"})
    batch_size: int = field(default=1, metadata={
        "min": 1, "help": "trace batch of the ONNX export; the fixed batch with --static"})
    opset: int = field(default=18, metadata={"min": 7})
    static: bool = field(default=False, metadata={"switch": True, "help": "fixed batch size in the exported graph"})
    raw: bool = field(default=False, metadata={"switch": True, "help": "export the raw head maps, not boxes"})
    nms: bool = field(default=False, metadata={"switch": True, "help": "put NonMaxSuppression into the graph"})
    conf_thres: float = field(default=0.25, metadata={"min": 0, "max": 1, "help": "with --nms"})
    iou_thres: float = field(default=0.45, metadata={"min": 0, "max": 1, "help": "with --nms"})
    max_det: int = field(default=300, metadata={"min": 1, "help": "with --nms"})
    tol: float = field(default=1e-3, metadata={
        "gt": 0, "help": "max |runtime - torch| / max(1, |torch|) allowed"})
    int8: bool = field(default=False, metadata={
        "switch": True, "group": INT8, "help": "quantize to INT8 (default output <stem>.int8.onnx / .int8.xml)"})
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
    if a is not None and a.int8 and (FORMATS.get(a.format) not in INT8_RUNTIMES or not a.calib_data):
        fmts = " or ".join(k for k, v in FORMATS.items() if v in INT8_RUNTIMES)
        raise YoloSlimError(f"--int8 needs --format {fmts} and --calib-data")
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
    from yolo_slim.deploy.backends import backend, shipped_files
    from yolo_slim.nn.weights import load_model, save_checkpoint, save_darknet_weights
    runtime = FORMATS.get(args.format)
    b = backend(runtime) if runtime else None  # a runtime that does not import: one line, now
    ext = b.SUFFIX if b else "." + args.format
    out = args.output or os.path.splitext(args.weights)[0] + (".int8" if args.int8 else "") + ext
    resolved_json = out + ".args.json"
    written = shipped_files(out) if b else [out]
    guard_outputs({"--cfg": args.cfg, "--weights": args.weights, "--calib-data": args.calib_data},
                  {"--output": written + [resolved_json] + ([out + ".quant.json"] if args.int8 else [])})
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise YoloSlimError(f"--output {out}: directory does not exist")
    model = load_model(args.cfg, args.weights)
    if args.format == "weights":
        save_darknet_weights(model, out)
    elif args.format == "pt":
        save_checkpoint(model, out)
    elif args.int8:
        from yolo_slim.deploy.backends import int8_export
        from yolo_slim.deploy.quantize import QuantOptions, format_parity
        q = QuantOptions(calib_method=args.calib_method, calib_images=args.calib_images,
                         calib_split=args.calib_split, per_channel=not args.per_tensor,
                         min_match=args.min_match)
        r = int8_export(runtime)(model, out, args, args.calib_data, q)
        print(f"{b.NAME} check (FP32 before quantization): max |delta| vs torch = "
              f"{r['fp32_check']['max_abs_delta']:.3g}")
        print(format_parity(r))
    else:
        r = b.export(model, out, args)
        extra = f", opset {r['opset']}" if "opset" in r else ""
        extra += f", {r['precision']}" if "precision" in r else ""
        print(f"{b.NAME} check: {b.NAME} vs torch on a batch of {r['check_batch']}: "
              f"max |delta| = {r['max_abs_delta']:.3g} (relative {r['max_rel_delta']:.3g}); "
              f"outputs {', '.join(r['outputs'])}{extra}")
    write_resolved(resolved_json, args, output=out)
    print(f"wrote {' + '.join(written)}")
    return 0
