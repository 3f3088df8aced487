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
from typing import Sequence

from yolo_slim.core.errors import YoloSlimError, cli_main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    from yolo_slim.core.cli import Parser, number, parse
    p = Parser(description=__doc__)
    p.add_argument("--cfg", help="darknet cfg (optional when --weights is a yolo-slim .pt)")
    p.add_argument("--weights", required=True, help=".weights or .pt")
    p.add_argument("--format", choices=["weights", "pt", "onnx"], required=True)
    p.add_argument("--output", help="output file (default: next to --weights, new extension); "
                                    "the resolved flags go to <output>.args.json")
    p.add_argument("--img-size", type=number(int, min=1), nargs="+", default=[416],
                   help="S or H W (onnx): multiples of the cfg's largest stride")
    p.add_argument("--batch-size", type=number(int, min=1), default=1,
                   help="onnx: trace batch; the fixed batch with --static")
    p.add_argument("--opset", type=number(int, min=7), default=18)
    p.add_argument("--static", action="store_true", help="fixed batch size in the onnx graph")
    p.add_argument("--raw", action="store_true", help="export the raw head maps, not boxes")
    p.add_argument("--nms", action="store_true", help="put NonMaxSuppression into the graph")
    p.add_argument("--conf-thres", type=number(float, min=0, max=1), default=0.25, help="with --nms")
    p.add_argument("--iou-thres", type=number(float, min=0, max=1), default=0.45, help="with --nms")
    p.add_argument("--max-det", type=number(int, min=1), default=300, help="with --nms")
    p.add_argument("--tol", type=number(float, gt=0), default=1e-3,
                   help="max |onnxruntime - torch| / max(1, |torch|) allowed")
    q = p.add_argument_group("INT8 (with --format onnx)")
    q.add_argument("--int8", action="store_true", help="quantize to INT8 (default output <stem>.int8.onnx)")
    q.add_argument("--calib-data", help="darknet .data file whose images calibrate the INT8 ranges")
    q.add_argument("--calib-images", type=number(int, min=1), default=100,
                   help="images taken evenly from the list")
    q.add_argument("--calib-split", choices=["train", "valid"], default="train")
    q.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    q.add_argument("--min-match", type=number(float, min=0, max=1), default=0.5,
                   help="refuse an INT8 model that finds fewer of the FP32 detections (0: never)")
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
