"""results.csv -> results.png: one small line chart per numeric column, drawn with OpenCV
(no matplotlib in the environment)."""
from __future__ import annotations

import csv
import math

import cv2
import numpy as np


def _chart(title: str, xs: list[float], ys: list[float], w: int = 300, h: int = 200) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.putText(img, title[:36], (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    l, r, t, b = 44, w - 10, 26, h - 22
    cv2.rectangle(img, (l, t), (r, b), (200, 200, 200), 1)
    if not ys:
        return img
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pts = [(int(l + (x - x0) / (x1 - x0) * (r - l)), int(b - (y - lo) / (hi - lo) * (b - t)))
           for x, y in zip(xs, ys)]
    for p, q in zip(pts, pts[1:]):
        cv2.line(img, p, q, (200, 90, 30), 2, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, p, 2, (30, 30, 200), -1)
    for v, y in ((hi, t + 8), (lo, b)):
        cv2.putText(img, f"{v:.3g}", (2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (60, 60, 60), 1)
    cv2.putText(img, f"epoch {x0:g}..{x1:g}", (l, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                (60, 60, 60), 1)
    return img


def plot_results(csv_path: str, png_path: str, x_key: str = "epoch", cols: int = 4) -> None:
    """Draw every numeric column of a results.csv against its epoch column; empty cells
    (e.g. epochs without evaluation) are skipped."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    charts = []
    for key in rows[0]:
        if key == x_key:
            continue
        xs, ys = [], []
        for row in rows:
            try:
                x, y = float(row[x_key]), float(row[key])
            except (TypeError, ValueError):
                continue
            if math.isfinite(y):
                xs.append(x)
                ys.append(y)
        if ys:
            charts.append(_chart(key, xs, ys))
    if not charts:
        return
    n = math.ceil(len(charts) / cols) * cols
    charts += [np.full_like(charts[0], 255)] * (n - len(charts))
    grid = np.vstack([np.hstack(charts[i:i + cols]) for i in range(0, n, cols)])
    from yolo_slim.core.draw import save_png
    save_png(grid, png_path)
