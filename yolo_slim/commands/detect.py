"""Draw a detector's boxes on images: one image, a folder, or a .txt list of image paths.

  python detect.py --cfg cfg/tiny.cfg --weights best.pt --source data/shapes/images/valid \
      --names data/shapes/shapes.names --output-dir runs/detect
Writes the drawn images, detections.txt (image cls name score x1 y1 x2 y2, original pixels)
and detections.json to --output-dir.
  --preprocess darknet --multi-label --conf-thres 0.25 --iou-thres 0.45   gives what pjreddie
darknet's `detect` gives for the same cfg/weights (docs/preprocessing.md).
`yolo-slim detect` and `python detect.py` are this command.
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from yolo_slim.core.errors import cli_main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    from yolo_slim.core.cli import Parser, number, parse
    p = Parser(description=__doc__)
    p.add_argument("--cfg", help="darknet cfg (optional when --weights is a yolo-slim .pt)")
    p.add_argument("--weights", required=True, help=".weights or .pt")
    p.add_argument("--source", required=True, help="image, folder of images, or .txt list")
    p.add_argument("--names", help="class names file (one per line); default: class ids")
    p.add_argument("--img-size", type=number(int, min=1), default=416)
    p.add_argument("--conf-thres", type=number(float, min=0, max=1), default=0.25)
    p.add_argument("--iou-thres", type=number(float, min=0, max=1), default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=number(int, min=1), default=300)
    p.add_argument("--preprocess", choices=["letterbox", "darknet", "resize"], default="letterbox",
                   help="letterbox: as training (default); darknet: pjreddie darknet's "
                        "letterbox_image; resize: AlexeyAB darknet's plain resize (docs/preprocessing.md)")
    p.add_argument("--multi-label", action="store_true",
                   help="one row per class above --conf-thres for each box (darknet's rule)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N or N (default: cuda if any)")
    p.add_argument("--output-dir", default="runs/detect")
    return parse(p, argv)


def output_files(sources: list[str], output_dir: str) -> list[str]:
    """Every path run_detect writes for these sources (drawn copies keep the image names)."""
    from yolo_slim.eval.detect import _out_name
    used: set[str] = set()
    names = [_out_name(s, used) for s in sources]
    return [os.path.join(output_dir, n) for n in
            (*names, "detections.txt", "detections.json", "args.json")]


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args is None:  # --help
        return 0
    from yolo_slim.core.cli import write_resolved
    from yolo_slim.core.paths import ensure_dir, guard_outputs
    from yolo_slim.eval.detect import list_sources, load_names, run_detect
    from yolo_slim.core.device import select_device
    from yolo_slim.nn.weights import load_model
    sources = list_sources(args.source)  # fail on a bad source before loading the model
    guard_outputs({"--cfg": args.cfg, "--weights": args.weights, "--names": args.names,
                   "--source": [args.source] + sources},
                  {"--output-dir": output_files(sources, args.output_dir)})
    ensure_dir(args.output_dir)
    model = load_model(args.cfg, args.weights)
    names = load_names(args.names, model.num_classes)
    r = run_detect(model, args.source, args.output_dir, args.img_size, args.conf_thres,
                   args.iou_thres, args.max_det, names, select_device(args.device),
                   preprocess=args.preprocess, multi_label=args.multi_label)
    write_resolved(os.path.join(args.output_dir, "args.json"), args)
    skipped = f", {r['n_missing']} unreadable skipped" if r["n_missing"] else ""
    print(f"{r['n_detections']} detections in {r['n_images']} images{skipped}; "
          f"wrote {r['output_dir']}/ (drawn images, detections.txt, detections.json)")
    return 0
