"""Calibration images for INT8: a deterministic subset of a darknet image list, read and
letterboxed by the project's dataset (the same preprocessing evaluate.py and detect.py use)."""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

import cv2
import numpy as np

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.data.dataset import YoloDataset
from yolo_slim.data.files import parse_data_file, read_image, read_image_list


class _Unreadable(Exception):
    pass


class _CalibDataset(YoloDataset):
    """YoloDataset that refuses an undecodable image instead of substituting a grey one: a
    calibration range measured on grey padding would be silently wrong."""

    def load(self, i: int) -> np.ndarray:
        img = read_image(self.paths[i])
        if img is None:
            raise _Unreadable(self.paths[i])
        return img


def _decodes(path: str) -> bool:
    """True when OpenCV decodes the image (its own warnings about a broken file muted)."""
    if not os.path.isfile(path):
        return False
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return read_image(path) is not None
    finally:
        cv2.utils.logging.setLogLevel(level)


class CalibrationImages:
    """`n` images spread evenly over the `split` list of a .data file, letterboxed to a
    square `img_size`; iterating yields float32 [batch, 3, S, S] RGB 0-1 arrays. An image that is
    missing or does not decode is dropped and counted; no readable image at all is an error,
    raised when the set is built (before any export work)."""

    def __init__(self, data_file: str, img_size: int, n: int = 100, split: str = "train",
                 batch: int = 1):
        if n < 1:
            raise YoloSlimError(f"--calib-images {n}: must be at least 1")
        dc = parse_data_file(data_file)
        listed = read_image_list(getattr(dc, split))
        if not listed:
            raise YoloSlimError(f"calibration set {data_file} ({split}): the image list is empty")
        pick = sorted({int(round(k)) for k in np.linspace(0, len(listed) - 1, min(n, len(listed)))})
        self.data_file, self.split, self.batch = data_file, split, batch
        self.requested = len(pick)
        # decode each chosen image once now, so a bad set fails before any export work
        chosen = [os.path.abspath(listed[k]) for k in pick]
        self.unreadable = [p for p in chosen if not _decodes(p)]
        good = [p for p in chosen if p not in set(self.unreadable)]
        if not good:
            raise YoloSlimError(f"calibration set {data_file} ({split}): no readable image "
                                f"(none of the {len(chosen)} chosen decodes, e.g. {chosen[0]})")
        with tempfile.TemporaryDirectory() as tmp:  # the subset as a list file, absolute paths
            lst = os.path.join(tmp, "calib.txt")
            with open(lst, "w") as f:
                f.write("\n".join(good) + "\n")
            self.ds = _CalibDataset(lst, img_size, augment=False, nc=dc.classes)
        self.used = 0

    def __len__(self) -> int:
        return len(self.ds)

    def images(self) -> Iterator[np.ndarray]:
        """One [3, S, S] image at a time; undecodable ones are skipped and recorded."""
        self.used = 0
        for i in range(len(self.ds)):
            try:
                img = self.ds[i][0].numpy()
            except _Unreadable as e:  # it decoded when the set was built: changed since
                if str(e) not in self.unreadable:
                    self.unreadable.append(str(e))
                continue
            self.used += 1
            yield img
        if not self.used:
            raise YoloSlimError(f"calibration set {self.data_file} ({self.split}): no readable "
                                f"image (none of {len(self.ds)} could be decoded)")

    def __iter__(self) -> Iterator[np.ndarray]:
        """Batches of `batch` images; the last one is topped up with the first images, so a
        static-batch graph can be fed (repeats do not move min/max ranges)."""
        buf: list[np.ndarray] = []
        first: list[np.ndarray] = []
        for img in self.images():
            buf.append(img)
            if len(first) < self.batch:
                first.append(img)
            if len(buf) == self.batch:
                yield np.stack(buf)
                buf = []
        if buf:
            while len(buf) < self.batch:
                buf.append(first[(len(buf)) % len(first)])
            yield np.stack(buf)

    def summary(self) -> str:
        bad = f", {len(self.unreadable)} undecodable" if self.unreadable else ""
        return (f"{self.used} calibration images from {os.path.basename(self.data_file)} "
                f"({self.split}; {self.requested} chosen evenly{bad}; {self.ds.summary})")
