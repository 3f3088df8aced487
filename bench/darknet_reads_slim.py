#!/usr/bin/env python3
"""Real darknet reads every slimmed file: each cfg/weights pair is run by pjreddie darknet
(Debian's libdarknet, through yolo_slim.tools.libdarknet, as `darknet detect` runs) and by the
project's model (--preprocess darknet, multi-label, the same thresholds and NMS) on darknet's 7
sample photos and a few held-out street frames; per file, darknet's and the project's detection
counts, how many match one to one (same class, IoU >= 0.5), max |Δscore| and max box Δ.

  .venv/bin/python bench/darknet_reads_slim.py runs/real/pruned/yolov3-tiny.{cfg,weights} \
      runs/real/finetune/yolov3-tiny.{cfg,weights} [--thresh 0.25 0.1] [--frames 5] [--out FILE]

Pairs are given as CFG WEIGHTS, one after the other. Darknet runs each file in a child process,
so a file it cannot read is a row saying so, not a crash. pjreddie's CPU batch norm divides by
sqrt(var) + 1e-6 where the project takes sqrt(var + 1e-5): |Δscore| around 1e-4 is that.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import tempfile

from yolo_slim.core.errors import atomic_write_bytes
from yolo_slim.tools import libdarknet
from yolo_slim.tools.darknet_parity import compare

PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")


def darknet_reference(cfg: str, weights: str, photos: list[str], thresholds: list[float],
                      nms: float, classes: int, log: str) -> dict:
    """libdarknet's detections of every photo at every threshold, in the layout of
    tests/data/darknet_reference_*.json (what darknet_parity.compare reads). Run in a child:
    darknet's messages go to `log`, and its exit() on a bad file ends only the child."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    dn = libdarknet.LibDarknet()
    net = dn.load_network(cfg.encode(), weights.encode(), 0)
    dn.set_batch_network(net, 1)
    out = {"model": {"net_wh": [dn.network_width(net), dn.network_height(net)]}, "nms": nms,
           "photos": {}}
    for path in photos:
        rec = out["photos"][path] = {"detections": {}}
        for t in thresholds:
            (h, w), dets = dn.detect(net, path, t, nms, classes)
            rec.update(height=h, width=w)
            rec["detections"][str(t)] = dets
    return out


def check_file(cfg: str, weights: str, photos: list[str], thresholds: list[float],
               nms: float) -> list[dict]:
    """One row per threshold: darknet's detections against the project's on `photos`."""
    from yolo_slim.nn.weights import load_model
    model = load_model(cfg, weights).eval()
    with tempfile.NamedTemporaryFile(suffix=".log") as log, \
            cf.ProcessPoolExecutor(1) as pool:
        try:
            ref = pool.submit(darknet_reference, cfg, weights, photos, thresholds, nms,
                              model.num_classes, log.name).result()
        except cf.process.BrokenProcessPool:
            with open(log.name) as f:
                said = [line.strip() for line in f if line.strip()]
            return [{"error": f"darknet failed on it ({said[-1] if said else 'no message'})"}]
    return [compare(model, ref, "", "darknet", t) for t in thresholds]


def table(results: list[tuple[str, list[dict]]], n_photos: int, n_frames: int) -> str:
    lines = [f"{n_photos} darknet photos + {n_frames} held-out vtest frames per file; darknet: "
             f"libdarknet ({libdarknet.LIB}); project: --preprocess darknet, multi-label.", "",
             "| file | thresh | darknet's detections | project's | matched | max abs Δscore | "
             "max box Δ (px) | min IoU |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in results:
        for r in rows:
            if "error" in r:
                lines.append(f"| `{name}` | — | {r['error']} | | | | | |")
                continue
            lines.append(f"| `{name}` | {r['thresh']} | {r['n_ref']} | {r['matched'] + r['extra']} | "
                         f"{r['matched']} | {r['max_dscore']:.2e} | {r['max_dxy_px']:.3f} | "
                         f"{r['min_iou']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="CFG WEIGHTS", help="cfg/weights pairs")
    p.add_argument("--thresh", type=float, nargs="+", default=[0.25, 0.1])
    p.add_argument("--nms", type=float, default=0.45)
    p.add_argument("--frames", type=int, default=5, help="held-out vtest frames, evenly spaced")
    p.add_argument("--out", help="also write the table here")
    a = p.parse_args(argv)
    if not libdarknet.available():
        print(f"error: libdarknet not found at {libdarknet.LIB} (Debian package darknet)", file=sys.stderr)
        return 2
    pairs = list(zip(a.files[::2], a.files[1::2]))
    if len(a.files) % 2 or any(not c.endswith(".cfg") or not w.endswith(".weights") for c, w in pairs):
        p.error("give CFG WEIGHTS pairs (a .cfg, then its darknet .weights)")
    from yolo_slim.data.real_assets import real_asset
    photos = [os.path.join(real_asset("darknet-photos"), f"{s}.jpg") for s in PHOTOS]
    vtest = real_asset("vtest")
    with open(os.path.join(vtest, "valid.txt")) as f:
        held_out = [os.path.join(vtest, s.strip()) for s in f if s.strip()]
    step = max(1, len(held_out) // max(a.frames, 1))
    frames = held_out[::step][:a.frames]
    results = []
    for cfg, weights in pairs:
        print(f"checking {weights}", file=sys.stderr, flush=True)
        results.append((weights, check_file(cfg, weights, photos + frames, a.thresh, a.nms)))
    text = table(results, len(photos), len(frames)) + "\n"
    print(text, end="")
    if a.out:
        atomic_write_bytes(a.out, text.encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
