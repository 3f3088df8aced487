"""How an image becomes the network's input, and how boxes go back: three modes (docs/preprocessing.md).

- ``letterbox`` (default; what training uses): keep the aspect ratio, cv2 INTER_AREA when
  shrinking, grey 114 padding (augment.letterbox, the ultralytics convention).
- ``darknet``: pjreddie darknet's ``letterbox_image``: new size by integer arithmetic, darknet's
  own separable bilinear ``resize_image`` (align-corners scales, horizontal pass first), centred
  on a 0.5 canvas. Boxes go back as darknet's ``correct_yolo_boxes`` takes them back: through the
  float padding (net - new) / 2, which is half a pixel off the integer offset the image was
  embedded at when net - new is odd. With it the project's detections equal darknet's
  (tests/test_darknet_exact.py).
- ``resize``: AlexeyAB darknet's default (``letter_box=0``): darknet's resize straight to the
  network size, aspect not kept, so x and y scale differently; no padding.

``preprocess(img_bgr, (h, w), mode)`` returns ``(img, (rx, ry), (px, py))``: an RGB image (uint8
for letterbox, float32 0-1 for the darknet modes, exactly darknet's values), the scales and the
padding that map the input frame back to the original image: x0 = (x - px) / rx.
"""
from __future__ import annotations

import numpy as np
import torch

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.data.augment import letterbox

MODES = ("letterbox", "darknet", "resize")
DARKNET_FILL = 0.5  # letterbox_image's canvas: fill_image(boxed, .5)
# darknet's load_image_color (OpenCV): byte / 255. in double, stored as float
_BYTE_TO_FLOAT = (np.arange(256) / 255.0).astype(np.float32)

Ratio = tuple[float, float]
Pad = tuple[float, float]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise YoloSlimError(f"unknown preprocessing {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def to_float_rgb(img_bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR (cv2.imread) -> float32 RGB 0-1, the values darknet's load_image_color gives."""
    return _BYTE_TO_FLOAT[img_bgr[:, :, ::-1]]


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(1 - t) * a + t * b in float32, in darknet's order of operations."""
    one = np.float32(1)
    return (one - t) * a + t * b


def darknet_resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's resize_image on a float32 HWC image: bilinear with align-corners scales
    (w0 - 1) / (w - 1), first along x into a w x h0 image, then along y. The last column copies
    the last source column; the last row takes only its (1 - dy) term, as darknet does."""
    img = np.asarray(img, np.float32)
    h0, w0 = img.shape[:2]
    if w < 1 or h < 1:
        raise YoloSlimError(f"cannot resize to {w}x{h}")
    # horizontal pass: w x h0
    c = np.arange(w)
    w_scale = np.float32(w0 - 1) / np.float32(w - 1) if w > 1 else np.float32(0)
    sx = c.astype(np.float32) * w_scale
    ix = sx.astype(np.int64)  # (int) truncation, sx >= 0
    dx = sx - ix.astype(np.float32)
    last_c = (c == w - 1) | (w0 == 1)
    ix = np.where(last_c, w0 - 1, np.minimum(ix, w0 - 1))
    ix1 = np.minimum(ix + 1, w0 - 1)
    part = _lerp(img[:, ix], img[:, ix1], dx[None, :, None])
    part[:, last_c] = img[:, [w0 - 1]]
    # vertical pass: w x h
    r = np.arange(h)
    h_scale = np.float32(h0 - 1) / np.float32(h - 1) if h > 1 else np.float32(0)
    sy = r.astype(np.float32) * h_scale
    iy = np.minimum(sy.astype(np.int64), h0 - 1)
    dy = sy - iy.astype(np.float32)
    out = (np.float32(1) - dy)[:, None, None] * part[iy]
    more = ~((r == h - 1) | (h0 == 1))  # darknet skips the dy term on the last row
    iy1 = np.minimum(iy[more] + 1, h0 - 1)
    out[more] += dy[more, None, None] * part[iy1]
    return out


def darknet_letterbox_size(hw0: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    """(new_w, new_h) of darknet's letterbox_image: integer arithmetic, the float comparison."""
    (h0, w0), (h, w) = hw0, shape
    if np.float32(w) / np.float32(w0) < np.float32(h) / np.float32(h0):
        return w, (h0 * w) // w0
    return (w0 * h) // h0, h


def darknet_letterbox(img_rgb: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, Ratio, Pad]:
    """darknet's letterbox_image on a float32 RGB image: resized, embedded at the integer
    offset ((w - new_w) / 2, (h - new_h) / 2) in a canvas of 0.5. Returns the canvas, the
    scales (new_w / w0, new_h / h0) and the float padding correct_yolo_boxes removes."""
    h, w = shape
    h0, w0 = img_rgb.shape[:2]
    new_w, new_h = darknet_letterbox_size((h0, w0), shape)
    canvas = np.full((h, w, img_rgb.shape[2]), DARKNET_FILL, np.float32)
    left, top = (w - new_w) // 2, (h - new_h) // 2
    canvas[top:top + new_h, left:left + new_w] = darknet_resize(img_rgb, new_w, new_h)
    return canvas, (new_w / w0, new_h / h0), ((w - new_w) / 2, (h - new_h) / 2)


def preprocess(img_bgr: np.ndarray, shape: tuple[int, int], mode: str = "letterbox",
               ) -> tuple[np.ndarray, Ratio, Pad]:
    """uint8 BGR image -> (network input HWC RGB, (rx, ry), (px, py)); shape is (h, w).
    The input is uint8 for letterbox and float32 0-1 for darknet/resize (to_tensor takes both)."""
    check_mode(mode)
    if mode == "letterbox":
        img, r, pad = letterbox(img_bgr, shape)
        return np.ascontiguousarray(img[:, :, ::-1]), (r, r), (float(pad[0]), float(pad[1]))
    rgb = to_float_rgb(img_bgr)
    if mode == "darknet":
        return darknet_letterbox(rgb, shape)
    h, w = shape
    h0, w0 = img_bgr.shape[:2]
    return darknet_resize(rgb, w, h), (w / w0, h / h0), (0.0, 0.0)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC RGB (uint8 0-255 or float 0-1) -> CHW float32 0-1 tensor."""
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return x.float().div_(255) if img.dtype == np.uint8 else x.float()


def ratio_xy(ratio: float | tuple[float, float]) -> Ratio:
    """A scale as stored in a loader's shape_info (one float for letterbox, (rx, ry) for the
    darknet modes) -> (rx, ry)."""
    if isinstance(ratio, (tuple, list)):
        return float(ratio[0]), float(ratio[1])
    return float(ratio), float(ratio)
