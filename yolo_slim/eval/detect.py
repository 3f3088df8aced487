"""Run a detector on images and draw what it finds.

Each image is prepared exactly as the data loader does (data.preprocess, the same --preprocess
mode: letterbox, darknet or resize), so boxes map back to the original image by undoing one
scale and one padding per axis: x0 = (x - padw) / ratio_x, y0 = (y - padh) / ratio_y.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from yolo_slim.core.draw import draw_boxes
from yolo_slim.data.files import IMG_EXTS, probe_image, read_image, read_image_list
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.data.preprocess import check_mode, ratio_xy, to_tensor
from yolo_slim.data.preprocess import preprocess as prepare_input
from yolo_slim.eval.evaluate import non_max_suppression
from yolo_slim.nn.model import check_img_size



def list_sources(source: str) -> list[str]:
    """An image file, a folder of images (sorted), or a .txt list of image paths."""
    if os.path.isdir(source):
        paths = sorted(os.path.join(source, f) for f in os.listdir(source)
                       if f.lower().endswith(IMG_EXTS))
    elif source.lower().endswith(".txt"):
        paths = read_image_list(source)
    elif os.path.isfile(source):
        paths = [source]
    else:
        raise YoloSlimError(f"source not found: {source}")
    if not paths:
        raise YoloSlimError(f"no images in {source} (looked for {', '.join(IMG_EXTS)})")
    return paths


def load_names(path: str | None, nc: int) -> list[str]:
    """Class names, one per line (a darknet .names file); class ids when no file is given."""
    if not path:
        return [str(c) for c in range(nc)]
    if not os.path.isfile(path):
        raise YoloSlimError(f"names file not found: {path}")
    with open(path, encoding="utf-8-sig") as f:  # BOM-safe
        names = [line.strip() for line in f if line.strip()]
    if len(names) < nc:
        raise YoloSlimError(f"{path}: {len(names)} names for a model with {nc} classes")
    return names


def scale_to_original(det: torch.Tensor, ratio: float | tuple[float, float], pad: tuple[float, float],
                      hw0: tuple[int, int]) -> torch.Tensor:
    """[n, 6] boxes in network-input pixels -> original-image pixels, clipped to the image.
    ratio: one scale, or (ratio_x, ratio_y) where the preprocessing scales the axes apart."""
    rx, ry = ratio_xy(ratio)
    det = det.clone()
    det[:, [0, 2]] = ((det[:, [0, 2]] - pad[0]) / rx).clamp(0, hw0[1])
    det[:, [1, 3]] = ((det[:, [1, 3]] - pad[1]) / ry).clamp(0, hw0[0])
    return det


@torch.no_grad()
def detect_image(model: torch.nn.Module, img_bgr: np.ndarray, img_size: int, conf_thres: float = 0.25,
                 iou_thres: float = 0.45, max_det: int = 300, device: str | torch.device = "cpu",
                 preprocess: str = "letterbox", multi_label: bool = False) -> np.ndarray:
    """Detections [n, 6] (x1, y1, x2, y2, score, cls) in the original image's pixels.
    The caller puts the model in eval mode (decoded boxes). preprocess: letterbox, darknet or
    resize (data.preprocess); multi_label keeps every class whose score passes conf_thres,
    one row each (darknet's rule: one box can carry several classes)."""
    inp, ratio, pad = prepare_input(img_bgr, (img_size, img_size), preprocess)
    x = to_tensor(inp).to(device).unsqueeze(0)
    pred = model(x)
    pred = pred[0] if isinstance(pred, (tuple, list)) else pred
    det = non_max_suppression(pred.float(), conf_thres, iou_thres, max_det, multi_label)[0]
    return scale_to_original(det.cpu(), ratio, pad, img_bgr.shape[:2]).double().numpy()


def _out_name(path: str, used: set[str]) -> str:
    stem, ext = os.path.splitext(os.path.basename(path))
    ext = ext.lower() if ext.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
    name, k = stem + ext, 1
    while name in used:  # the same file name from two folders of a list
        name, k = f"{stem}_{k}{ext}", k + 1
    used.add(name)
    return name


def run_detect(model: torch.nn.Module, source: str, output_dir: str, img_size: int = 416,
               conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300,
               names: Sequence[str] | None = None, device: str | torch.device = "cpu",
               progress: bool = True, preprocess: str = "letterbox",
               multi_label: bool = False) -> dict[str, Any]:
    """Detect on every image of source, save drawn copies plus detections.txt/.json in
    output_dir (each record names its preprocessing). Unreadable images are skipped with a
    one-line warning and counted."""
    from tqdm import tqdm
    if hasattr(model, "module_defs"):  # the cfg's own stride rule
        check_img_size(model.module_defs, (img_size, img_size))
    check_mode(preprocess)
    paths = list_sources(source)
    nc = int(getattr(model, "num_classes", 0)) or 1
    names = list(names) if names else [str(c) for c in range(nc)]
    os.makedirs(output_dir, exist_ok=True)
    was_training = model.training
    model.eval().to(device)
    records, lines, used, missing = [], [], set(), 0
    try:
        for path in tqdm(paths, desc="detect", disable=not progress, leave=False):
            _, problem, _ = probe_image(path)  # never decode a truncated or huge one
            img = None if problem else read_image(path)
            if img is None:
                what = {"truncated": "truncated image", "too_large": "image over the pixel limit"}
                print(f"warning: {what.get(problem, 'cannot read image')} {path}, skipped", file=sys.stderr)
                missing += 1
                continue
            det = detect_image(model, img, img_size, conf_thres, iou_thres, max_det, device,
                               preprocess, multi_label)
            out = _out_name(path, used)
            drawn = draw_boxes(img, [(c, x1, y1, x2, y2) for x1, y1, x2, y2, _, c in det],
                               names, det[:, 4])
            ok, buf = cv2.imencode(os.path.splitext(out)[1], drawn)
            if not ok:
                raise YoloSlimError(f"could not encode {out}")
            atomic_write_bytes(os.path.join(output_dir, out), buf.tobytes())
            boxes = [{"cls": int(c), "name": names[int(c)] if int(c) < len(names) else str(int(c)),
                      "score": round(float(s), 5), "box": [round(float(v), 2) for v in (x1, y1, x2, y2)]}
                     for x1, y1, x2, y2, s, c in det]
            records.append({"image": path, "output": out, "height": img.shape[0],
                            "width": img.shape[1], "preprocess": preprocess, "detections": boxes})
            lines += [f"{path} {b['cls']} {b['name']} {b['score']:.5f} "
                      + " ".join(f"{v:.2f}" for v in b["box"]) for b in boxes]
    finally:
        model.train(was_training)
    atomic_write_bytes(os.path.join(output_dir, "detections.json"),
                       json.dumps(records, indent=1).encode())
    atomic_write_bytes(os.path.join(output_dir, "detections.txt"),
                       "".join(line + "\n" for line in lines).encode())
    return {"n_images": len(records), "n_missing": missing, "output_dir": output_dir,
            "preprocess": preprocess,
            "n_detections": sum(len(r["detections"]) for r in records), "records": records}
