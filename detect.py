#!/usr/bin/env python3
"""Draw a detector's boxes on images: one image, a folder, or a .txt list of image paths.

  python detect.py --cfg cfg/tiny.cfg --weights best.pt --source data/shapes/images/valid \
      --names data/shapes/shapes.names --output-dir runs/detect
Writes the drawn images, detections.txt (image cls name score x1 y1 x2 y2, original pixels)
and detections.json to --output-dir.
"""
from __future__ import annotations

import argparse

from yolo_slim.core.errors import cli_main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", help="darknet cfg (optional when --weights is a yolo-slim .pt)")
    p.add_argument("--weights", required=True, help=".weights or .pt")
    p.add_argument("--source", required=True, help="image, folder of images, or .txt list")
    p.add_argument("--names", help="class names file (one per line); default: class ids")
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--conf-thres", type=float, default=0.25)
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N or N (default: cuda if any)")
    p.add_argument("--output-dir", default="runs/detect")
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    from yolo_slim.eval.detect import check_img_size, list_sources, load_names, run_detect
    from yolo_slim.core.device import select_device
    from yolo_slim.darknet.weights import load_model
    check_img_size(args.img_size)
    list_sources(args.source)  # fail on a bad source before loading the model
    model = load_model(args.cfg, args.weights)
    names = load_names(args.names, model.num_classes)
    r = run_detect(model, args.source, args.output_dir, args.img_size, args.conf_thres,
                   args.iou_thres, args.max_det, names, select_device(args.device))
    skipped = f", {r['n_missing']} unreadable skipped" if r["n_missing"] else ""
    print(f"{r['n_detections']} detections in {r['n_images']} images{skipped}; "
          f"wrote {r['output_dir']}/ (drawn images, detections.txt, detections.json)")


if __name__ == "__main__":
    raise SystemExit(main())
