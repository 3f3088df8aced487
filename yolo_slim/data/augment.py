"""Letterbox resizing and the training augmentations (HSV, flip, scale/translate; the mosaic
itself lives in data.YoloDataset because it needs other samples)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # grey letterbox border, as the YOLO tools use


def letterbox_params(hw0: tuple[int, int], shape: tuple[int, int]) -> tuple[float, float, float]:
    """Scale that fits (h0, w0) inside shape, and the centred padding (padw, padh)."""
    r = min(shape[0] / hw0[0], shape[1] / hw0[1])
    nh, nw = round(hw0[0] * r), round(hw0[1] * r)
    return r, (shape[1] - nw) / 2, (shape[0] - nh) / 2


def letterbox(img: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping aspect ratio, pad to `shape` (h, w) with grey; returns img, ratio, pad."""
    r, padw, padh = letterbox_params(img.shape[:2], shape)
    nh, nw = round(img.shape[0] * r), round(img.shape[1] * r)
    if (nh, nw) != img.shape[:2]:
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    top, left = int(round(padh - 0.1)), int(round(padw - 0.1))
    img = cv2.copyMakeBorder(img, top, shape[0] - nh - top, left, shape[1] - nw - left,
                             cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return img, r, (left, top)


def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float,
                vgain: float) -> np.ndarray:
    """Random hue/saturation/value gains through lookup tables (uint8 BGR in and out)."""
    g = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * g[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * g[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * g[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def warp_boxes(xyxy: np.ndarray, m: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply an axis-aligned affine (scale+translate) to pixel boxes, clip, and keep boxes
    that stay mostly visible (>=20% of their area and >=2 px per side)."""
    out = xyxy * m[0, 0]
    out[:, [0, 2]] += m[0, 2]
    out[:, [1, 3]] = xyxy[:, [1, 3]] * m[1, 1] + m[1, 2]
    area0 = (out[:, 2] - out[:, 0]) * (out[:, 3] - out[:, 1])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    bw, bh = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    keep = (bw > 2) & (bh > 2) & (bw * bh > 0.2 * area0)
    return out, keep


@dataclass
class Augment:
    """Training augmentation strengths (0 disables one)."""
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    scale: float = 0.5       # random zoom in [1-scale, 1+scale]
    translate: float = 0.1   # random shift, fraction of the image size
    mosaic: float = 0.0      # probability of a 4-image mosaic
