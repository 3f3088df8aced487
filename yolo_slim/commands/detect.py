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
from dataclasses import dataclass, field
from typing import Sequence

from yolo_slim.core.cli import Parser, add_dataclass_args
from yolo_slim.core.errors import cli_main

PREPROCESS = ["letterbox", "darknet", "resize"]


@dataclass
class ModelFlags:
    """The model a detect or evaluate run reads, and where it runs."""
    cfg: str | None = field(default=None, metadata={
        "type": str, "help": "darknet cfg (optional when --weights is a yolo-slim .pt)"})
    device: str = field(default="", metadata={"help": "cpu, cuda, cuda:N or N (default: cuda if any)"})
    max_det: int = field(default=300, metadata={"min": 1})


@dataclass
class DetectFlags(ModelFlags):
    """Every flag of detect.py."""
    weights: str | None = field(default=None, metadata={"type": str, "help": ".weights or .pt"})
    source: str | None = field(default=None, metadata={
        "type": str, "help": "image, folder of images, or .txt list"})
    names: str | None = field(default=None, metadata={
        "type": str, "help": "class names file (one per line); default: class ids"})
    img_size: int = field(default=416, metadata={"min": 1})
    conf_thres: float = field(default=0.25, metadata={"min": 0, "max": 1})
    iou_thres: float = field(default=0.45, metadata={"min": 0, "max": 1, "help": "NMS IoU threshold"})
    preprocess: str = field(default="letterbox", metadata={
        "choices": PREPROCESS, "help": "letterbox: as training (default); darknet: pjreddie "
                                      "darknet's letterbox_image; resize: AlexeyAB darknet's plain "
                                      "resize (docs/preprocessing.md)"})
    multi_label: bool = field(default=False, metadata={
        "switch": True, "help": "one row per class above --conf-thres for each box (darknet's rule)"})
    output_dir: str = "runs/detect"


def parser() -> Parser:
    p = Parser(description=__doc__)
    add_dataclass_args(p, DetectFlags, required=("weights", "source"))
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    from yolo_slim.core.cli import parse
    return parse(parser(), argv)


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
