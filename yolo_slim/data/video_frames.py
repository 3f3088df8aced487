"""Frames of a video as a dataset: which frames (two ranges split in time) and writing them."""
from __future__ import annotations

import os

import cv2

from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes


def frame_split(n: int, train: str, valid: str) -> tuple[list[int], list[int]]:
    """Frame indices of two 'start:stop:step' ranges (Python slices of range(n)); the two must
    not interleave, so held-out frames are never next to a training frame's near-duplicate."""
    def pick(spec: str) -> list[int]:
        try:
            idx = list(range(n)[slice(*(int(v) if v else None for v in spec.split(":")))])
        except (TypeError, ValueError):
            raise YoloSlimError(f"frame range {spec!r}: expected start:stop:step") from None
        if not idx:
            raise YoloSlimError(f"frame range {spec!r} selects none of the {n} frames")
        return idx
    a, b = pick(train), pick(valid)
    if not (max(a) < min(b) or max(b) < min(a)):
        raise YoloSlimError(f"frame ranges {train} and {valid} overlap in time; keep a gap between them")
    return a, b


def write_frames(cap: "cv2.VideoCapture", name: str, frames: list[int], dst: str, stem: str,
                 quality: int) -> None:
    """Frames `frames` (sorted) of an opened video as <dst>/<stem>_NNNN.jpg, read in order."""
    os.makedirs(dst, exist_ok=True)
    want, n = set(frames), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    for i in range(frames[-1] + 1):
        ok, frame = cap.read()
        if not ok:
            raise YoloSlimError(f"{name}: frame {i} of {n} unreadable")
        if i in want:
            jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
            atomic_write_bytes(os.path.join(dst, f"{stem}_{i:04d}.jpg"), jpg.tobytes())
