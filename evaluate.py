#!/usr/bin/env python3
"""Evaluate a detector on the valid split of a darknet .data file: P, R, mAP@.5, mAP@.5:.95.

  python evaluate.py --cfg cfg/tiny.cfg --weights runs/x/best.pt --data data/shapes/shapes.data
Writes <output-dir>/metrics.json and prints the per-class table.
"""
from __future__ import annotations

import argparse
import json
import os

from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", help="darknet cfg (optional when --weights is a yolo-slim .pt)")
    p.add_argument("--weights", required=True, help=".weights or .pt")
    p.add_argument("--data", required=True, help="darknet .data file")
    p.add_argument("--split", choices=["valid", "train"], default="valid")
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N or N (default: cuda if any)")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    p.add_argument("--rect", action="store_true", help="rectangular batches (less padding)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output-dir", default="runs/evaluate")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    from yolo_slim.core.device import select_device
    from yolo_slim.eval.evaluate import evaluate, format_metrics
    from yolo_slim.darknet.weights import load_model
    data = parse_data_file(args.data)
    model = load_model(args.cfg, args.weights)
    if model.num_classes != data.classes:
        raise YoloSlimError(f"the model has {model.num_classes} classes, {args.data} has {data.classes}")
    device = select_device(args.device)
    loader, _ = create_dataloader(getattr(data, args.split), args.img_size, args.batch_size,
                                  augment=False, rect=args.rect, workers=args.workers,
                                  shuffle=False, nc=data.classes)
    m = evaluate(model.to(device), loader, args.conf_thres, args.iou_thres, device, args.half,
                 names=data.names, max_det=args.max_det)
    print(format_metrics(m))
    os.makedirs(args.output_dir, exist_ok=True)
    out = os.path.join(args.output_dir, "metrics.json")
    atomic_write_bytes(out, json.dumps({"args": vars(args), **m}, indent=1).encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
