"""Low-level OpenCV drawing shared by detection output, the synthetic set's preview and the
plots: boxes with class labels, a white canvas, text, PNG writing. It depends on nothing but
OpenCV/numpy (and core.errors), so eval, data and analysis can all use it without depending
on each other."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from yolo_slim.core.errors import atomic_write_bytes


def class_color(cls: int) -> tuple[int, int, int]:
    """A fixed, well-separated BGR colour per class id (golden-ratio hue steps)."""
    hsv = np.uint8([[[int(cls * 0.618034 * 180) % 180, 220, 220]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])  # type: ignore


def draw_boxes(img: np.ndarray, boxes: Sequence, names: Sequence[str], scores=None) -> np.ndarray:
    """Draw (cls, x1, y1, x2, y2) boxes with class names (and scores) on a copy of img."""
    out = img.copy()
    for k, (cls, x1, y1, x2, y2) in enumerate(boxes):
        color = class_color(int(cls))
        cv2.rectangle(out, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), color, 2)
        name = names[int(cls)] if int(cls) < len(names) else str(int(cls))
        text = name if scores is None else f"{name} {float(scores[k]):.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        y0 = max(int(y1), th + 3)
        cv2.rectangle(out, (int(x1), y0 - th - 3), (int(x1) + tw + 2, y0), color, -1)
        cv2.putText(out, text, (int(x1) + 1, y0 - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out


# ---- plot primitives (no matplotlib) ----------------------------------------------------------

def canvas(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 255, np.uint8)


def put_text(img: np.ndarray, s: str, xy: tuple[int, int], scale: float = 0.4) -> None:
    cv2.putText(img, s, xy, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def save_png(img: np.ndarray, path: str) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())
