#!/usr/bin/env python3
"""Agreement of slimmed models with the model they came from, on the held-out video frames and
on the real photos (darknet's 7 + OpenCV's examples), label-free: the original's detections
(score >= 0.25) are the truth (`evaluate(..., reference=)`), so this is agreement, not accuracy.

  .venv/bin/python bench/real_agreement.py --reference-cfg C/coco-tiny/yolov3-tiny.cfg \
      --reference C/coco-tiny/yolov3-tiny.weights --models runs/real/finetune runs/real25/finetune \
      --out bench/results/real_agreement.md

Each --models entry is a folder holding one <stem>.cfg + <stem>.weights (a prune or fine-tune
output). The photos that the original detects nothing in (score >= 0.25) still count: a slim
model's boxes there are false positives.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yolo_slim.analysis.cost import model_flops  # noqa: E402
from yolo_slim.core.errors import atomic_write_bytes, cli_main  # noqa: E402
from yolo_slim.data.real_assets import real_asset  # noqa: E402


def photos_data(out_dir: str) -> str:
    """A .data file (80 COCO classes, no labels) whose valid list is every real photo."""
    photos = sorted(glob.glob(os.path.join(real_asset("darknet-photos"), "*.jpg")))
    try:
        photos += sorted(p for p in glob.glob(os.path.join(real_asset("opencv-photos"), "*"))
                         if p.lower().endswith((".jpg", ".png")))
    except Exception as e:  # the Debian part is optional
        print(f"note: {e}")
    os.makedirs(out_dir, exist_ok=True)
    lst = os.path.abspath(os.path.join(out_dir, "photos.txt"))
    atomic_write_bytes(lst, ("\n".join(photos) + "\n").encode())
    names = os.path.join(real_asset("coco-tiny"), "coco.names")
    data = os.path.join(out_dir, "photos.data")
    atomic_write_bytes(data, f"classes=80\ntrain={lst}\nvalid={lst}\nnames={names}\n".encode())
    return data


@cli_main
def main(argv=None):
    from yolo_slim.eval.evaluate import evaluate, validation_loader
    from yolo_slim.nn.weights import load_model
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True)
    p.add_argument("--reference-cfg", default=None)
    p.add_argument("--models", nargs="+", required=True, help="folders with one cfg + weights")
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    ref = load_model(a.reference_cfg, a.reference).eval()
    sets = {"held-out frames": os.path.join(real_asset("vtest"), "vtest.data"),
            "photos": photos_data(os.path.join("runs", "real-photos"))}
    loaders = {k: list(validation_loader(v, a.img_size, 16)[0]) for k, v in sets.items()}
    base = model_flops(ref, (a.img_size, a.img_size))
    rows = ["| model | FLOPs | " + " | ".join(f"{k}: agreement@0.5 | @0.5:0.95" for k in sets) + " |",
            "| --- | --- | " + " | ".join("--- | ---" for _ in sets) + " |"]
    for folder in [None, *a.models]:
        if folder is None:
            name, m = "original (itself)", ref
        else:
            cfg = glob.glob(os.path.join(folder, "*.cfg"))[0]
            name, m = folder, load_model(cfg, os.path.splitext(cfg)[0] + ".weights").eval()
        cells = []
        for k, batches in loaders.items():
            r = evaluate(m, batches, progress=False, reference=ref)
            cells.append(f"{r['map50']:.3f} | {r['map']:.3f}")
        flops = model_flops(m, (a.img_size, a.img_size))
        rows.append(f"| `{name}` | {flops / 1e9:.2f} G ({flops / base:.0%}) | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    n = {k: sum(len(b[0]) for b in v) for k, v in loaders.items()}
    text = "\n".join([f"Agreement with `{a.reference}` ({', '.join(f'{k}: {v} images' for k, v in n.items())}), "
                      f"{a.img_size} px, letterbox; truth = its detections with score >= 0.25.", "", *rows, ""])
    print(text)
    if a.out:
        atomic_write_bytes(a.out, text.encode())


if __name__ == "__main__":
    raise SystemExit(main())
