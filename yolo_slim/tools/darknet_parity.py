"""The project's detections against real darknet's recorded ones (bench/darknet_reference.py
writes them, tests/data/darknet_reference_yolov3-tiny.json holds pjreddie darknet's), one table
row per preprocessing mode and threshold:

  python -m yolo_slim.tools.darknet_parity [--reference tests/data/darknet_reference_yolov3-tiny.json]
      [--model-dir ~/.cache/yolo-slim/coco-tiny] [--photos ~/.cache/yolo-slim/darknet-photos]

Both sides use darknet's detection rule at the recorded threshold and NMS: a box is kept for
every class whose obj * cls score passes the threshold, NMS per class (non_max_suppression
with multi_label). Detections are matched one to one per photo, same class, by IoU (>= 0.5,
highest first); Δscore and the box differences are taken over the matched pairs, what is left
on either side is counted as missing (darknet has it, we do not) or extra.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
import torch

from yolo_slim.core.cli import Parser, parse
from yolo_slim.core.errors import YoloSlimError, cli_main
from yolo_slim.data.preprocess import MODES
from yolo_slim.eval.evaluate import box_iou

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data",
                         "darknet_reference_yolov3-tiny.json")


def reference_detections(photo: dict[str, Any], thresh: float) -> np.ndarray:
    """A recorded photo's detections at thresh as [m, 6] (x1, y1, x2, y2, prob, cls), boxes
    clipped to the image as detect_image clips its own."""
    rows = [[*d["xyxy"], d["prob"], d["cls"]] for d in photo["detections"][str(thresh)]]
    out = np.asarray(rows, np.float64).reshape(-1, 6)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, photo["width"])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, photo["height"])
    return out


def match(ours: np.ndarray, ref: np.ndarray, iou_min: float = 0.5,
          ) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """One-to-one matching of two [n, 6] detection sets, same class, by IoU >= iou_min, highest
    IoU first. Returns (pairs (i_ours, j_ref, iou), unmatched ours, unmatched ref)."""
    iou = box_iou(torch.as_tensor(ours[:, :4]), torch.as_tensor(ref[:, :4])).numpy()
    iou = np.where(ours[:, 5, None] == ref[None, :, 5], iou, -1.0)
    pairs, used_i, used_j = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < iou_min:
            break
        if i not in used_i and j not in used_j:
            pairs.append((int(i), int(j), float(iou[i, j])))
            used_i.add(i)
            used_j.add(j)
    return (pairs, [i for i in range(len(ours)) if i not in used_i],
            [j for j in range(len(ref)) if j not in used_j])


def compare(model: torch.nn.Module, reference: dict[str, Any], photos_dir: str, mode: str,
            thresh: float) -> dict[str, Any]:
    """Detect every recorded photo with `mode` at the reference's threshold, size and NMS, and
    sum up how far the detections are from darknet's."""
    import cv2

    from yolo_slim.eval.detect import detect_image
    w, h = reference["model"]["net_wh"]
    if w != h:
        raise YoloSlimError(f"reference made at {w}x{h}; detect_image takes square inputs")
    dscore, iou, dxy, n_ref, missing, extra, pairs_out = [], [], [], 0, 0, 0, []
    model.eval()
    for name, photo in reference["photos"].items():
        img = cv2.imread(os.path.join(photos_dir, name))
        if img is None:
            raise YoloSlimError(f"cannot read {os.path.join(photos_dir, name)}")
        ours = detect_image(model, img, w, thresh, reference["nms"], max_det=1000,
                            preprocess=mode, multi_label=True)
        ref = reference_detections(photo, thresh)
        pairs, lost_ours, lost_ref = match(ours, ref)
        n_ref, missing, extra = n_ref + len(ref), missing + len(lost_ref), extra + len(lost_ours)
        for i, j, v in pairs:
            dscore.append(abs(ours[i, 4] - ref[j, 4]))
            iou.append(v)
            dxy.append(np.abs(ours[i, :4] - ref[j, :4]).max())
            pairs_out.append({"photo": name, "cls": int(ref[j, 5]), "ref": float(ref[j, 4]),
                              "ours": float(ours[i, 4])})
    return {"mode": mode, "thresh": thresh, "n_ref": n_ref, "matched": len(dscore),
            "missing": missing, "extra": extra,
            "max_dscore": float(max(dscore, default=0.0)), "mean_dscore": float(np.mean(dscore)) if dscore else 0.0,
            "min_iou": float(min(iou, default=1.0)), "max_dxy_px": float(max(dxy, default=0.0)),
            "pairs": pairs_out}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| --preprocess | thresh | darknet's detections | matched | missing | extra | "
            "max abs Δscore | mean abs Δscore | min IoU | max box Δ (px) |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    return "\n".join([head] + [
        f"| {r['mode']} | {r['thresh']} | {r['n_ref']} | {r['matched']} | {r['missing']} | "
        f"{r['extra']} | {r['max_dscore']:.5f} | {r['mean_dscore']:.5f} | {r['min_iou']:.4f} | "
        f"{r['max_dxy_px']:.3f} |" for r in rows])


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    from yolo_slim.data.real_assets import real_asset
    from yolo_slim.nn.weights import load_model
    p = Parser(prog="python -m yolo_slim.tools.darknet_parity", description=__doc__)
    p.add_argument("--reference", default=os.path.normpath(REFERENCE))
    p.add_argument("--model-dir", help="yolov3-tiny.cfg/.weights (default: real asset coco-tiny)")
    p.add_argument("--photos", help="the photos (default: real asset darknet-photos)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--json", help="also write the rows (with every matched pair) here")
    a = parse(p, argv)
    if a is None:  # --help
        return 0
    with open(a.reference) as f:
        ref = json.load(f)
    model_dir = a.model_dir or real_asset("coco-tiny")
    photos = a.photos or real_asset("darknet-photos")
    model = load_model(os.path.join(model_dir, ref["model"]["cfg"]),
                       os.path.join(model_dir, ref["model"]["weights"]))
    rows = [compare(model, ref, photos, m, t) for m in a.modes for t in ref["thresholds"]]
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
