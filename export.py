#!/usr/bin/env python3
"""Convert a model: darknet .weights <-> .pt checkpoint, or export ONNX for deployment.

  python export.py --cfg cfg/yolov3.cfg --weights yolov3.weights --format pt --output y.pt
  python export.py --cfg cfg/yolov3.cfg --weights y.pt --format weights --output y.weights
  python export.py --cfg cfg/yolov3.cfg --weights yolov3.weights --format onnx --img-size 416
"""
from __future__ import annotations

import argparse
import os

from yolo_slim.core.errors import YoloSlimError, cli_main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", help="darknet cfg (optional when --weights is a yolo-slim .pt)")
    p.add_argument("--weights", required=True, help=".weights or .pt")
    p.add_argument("--format", choices=["weights", "pt", "onnx"], required=True)
    p.add_argument("--output", help="output file (default: next to --weights, new extension)")
    p.add_argument("--img-size", type=int, nargs="+", default=[416], help="S or H W (onnx)")
    p.add_argument("--batch-size", type=int, default=1, help="onnx: trace batch; the fixed batch with --static")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--static", action="store_true", help="fixed batch size in the onnx graph")
    p.add_argument("--raw", action="store_true", help="export the raw head maps, not boxes")
    p.add_argument("--nms", action="store_true", help="put NonMaxSuppression into the graph")
    p.add_argument("--conf-thres", type=float, default=0.25, help="with --nms")
    p.add_argument("--iou-thres", type=float, default=0.45, help="with --nms")
    p.add_argument("--max-det", type=int, default=300, help="with --nms")
    p.add_argument("--tol", type=float, default=1e-3, help="max |onnxruntime - torch| / max(1, |torch|) allowed")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from yolo_slim.darknet.weights import load_model, save_checkpoint, save_darknet_weights
    ext = {"weights": ".weights", "pt": ".pt", "onnx": ".onnx"}[args.format]
    out = args.output or os.path.splitext(args.weights)[0] + ext
    if os.path.abspath(out) == os.path.abspath(args.weights):
        raise YoloSlimError(f"--output {out} would overwrite the input weights")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise YoloSlimError(f"--output {out}: directory does not exist")
    model = load_model(args.cfg, args.weights)
    if args.format == "weights":
        save_darknet_weights(model, out)
    elif args.format == "pt":
        save_checkpoint(model, out)
    else:
        from yolo_slim.deploy.export import export_onnx
        r = export_onnx(model, out, args)
        print(f"onnx check: onnxruntime vs torch on a batch of {r['check_batch']}: "
              f"max |delta| = {r['max_abs_delta']:.3g} (relative {r['max_rel_delta']:.3g}); "
              f"outputs {', '.join(r['outputs'])}, opset {r['opset']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
