"""The files of a darknet dataset: the `.data` file, image lists, YOLO txt labels (parsed with
every bad line counted, never fatal) and image sizes read from file headers."""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field

import cv2
import numpy as np

from yolo_slim.core.errors import YoloSlimError

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class DataConfig:
    classes: int
    train: str
    valid: str
    names: list[str] = field(default_factory=list)
    path: str = ""


def parse_data_file(path: str) -> DataConfig:
    """Read a darknet `.data` file; list and names paths resolve relative to its folder."""
    if not os.path.isfile(path):
        raise YoloSlimError(f"data file not found: {path}")
    root = os.path.dirname(os.path.abspath(path))
    kv: dict[str, tuple[str, int]] = {}
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if "=" not in line:
                raise YoloSlimError(f"{path}:{n}: expected 'key = value', got {line!r}")
            k, v = (s.strip() for s in line.split("=", 1))
            kv[k] = (v, n)

    def resolve(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(root, p)

    for key in ("classes", "train"):
        if key not in kv:
            raise YoloSlimError(f"{path}: missing '{key}='")
    v, n = kv["classes"]
    if not v.isdigit() or int(v) < 1:
        raise YoloSlimError(f"{path}:{n}: classes={v} must be a positive integer")
    nc = int(v)
    train = resolve(kv["train"][0])
    valid = resolve(kv["valid"][0]) if "valid" in kv else train
    names = [f"class{i}" for i in range(nc)]
    if "names" in kv:
        npath = resolve(kv["names"][0])
        if not os.path.isfile(npath):
            raise YoloSlimError(f"{path}:{kv['names'][1]}: names file not found: {npath}")
        with open(npath, encoding="utf-8-sig", errors="replace") as f:
            got = [s.strip() for s in f if s.strip()]
        if len(got) != nc:
            raise YoloSlimError(f"{path}:{kv['names'][1]}: {npath} has {len(got)} names, "
                                f"classes={nc}")
        names = got
    return DataConfig(nc, train, valid, names, os.path.abspath(path))


def label_path_for(img_path: str) -> str:
    """Darknet's rule: the last `/images/` becomes `/labels/`, the extension becomes `.txt`."""
    p = img_path.replace(os.sep, "/")
    i = p.rfind("/images/")
    if i >= 0:
        p = p[:i] + "/labels/" + p[i + len("/images/"):]
    return os.path.splitext(p)[0] + ".txt"


def image_hw(path: str) -> tuple[int, int] | None:
    """(h, w) from a PNG/JPEG header without decoding; falls back to a full decode."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            w, h = struct.unpack(">II", head[16:24])
            return int(h), int(w)
        if head[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(head):
                if head[i] != 0xFF:
                    break
                marker = head[i + 1]
                seglen = struct.unpack(">H", head[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", head[i + 5:i + 9])
                    return int(h), int(w)
                i += 2 + seglen
    except OSError:
        return None
    img = cv2.imread(path)
    return None if img is None else img.shape[:2]


class BadData:
    """Counts of each bad-data case, with the first example of each for the summary line."""
    CASES = {"missing_image": "missing/unreadable images skipped",
             "missing_label": "images without a label file (no objects)",
             "bad_class": "label lines with a class out of range skipped",
             "malformed": "malformed label lines skipped",
             "clipped": "boxes clipped to 0-1",
             "empty_box": "boxes of zero size skipped"}

    def __init__(self) -> None:
        self.counts = {k: 0 for k in self.CASES}
        self.example: dict[str, str] = {}

    def add(self, case: str, where: str) -> None:
        self.counts[case] += 1
        self.example.setdefault(case, where)

    def summary(self, name: str, n_images: int, n_boxes: int) -> str:
        bad = [f"{c} {self.CASES[k]} (e.g. {self.example[k]})"
               for k, c in self.counts.items() if c]
        return f"{name}: {n_images} images, {n_boxes} boxes" + (
            "; " + "; ".join(bad) if bad else "; no bad data")


def parse_labels(path: str, nc: int | None, bad: BadData) -> np.ndarray:
    """[n, 5] float32 (cls, cx, cy, w, h) from a YOLO txt file, bad lines counted."""
    out = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{n}"
            try:
                c, cx, cy, w, h = (float(v) for v in parts[:5])
                if len(parts) < 5 or not all(map(math.isfinite, (c, cx, cy, w, h))):
                    raise ValueError
            except ValueError:
                bad.add("malformed", where)
                continue
            if c != int(c) or c < 0 or (nc is not None and c >= nc):
                bad.add("bad_class", where)
                continue
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            box = np.clip([x1, y1, x2, y2], 0.0, 1.0)
            if not np.allclose(box, [x1, y1, x2, y2], atol=1e-6):
                bad.add("clipped", where)
            x1, y1, x2, y2 = box
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                bad.add("empty_box", where)
                continue
            out.append((c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
    return np.array(out, np.float32).reshape(-1, 5)


def read_image_list(list_path: str, root: str | None = None) -> list[str]:
    """Image paths from a list file; a relative path is tried against `root` (default: the
    list file's folder) and then the working directory (darknet's own rule)."""
    if not os.path.isfile(list_path):
        raise YoloSlimError(f"image list not found: {list_path}")
    if os.path.isdir(list_path):
        raise YoloSlimError(f"{list_path}: expected an image list file, got a folder")
    base = root or os.path.dirname(os.path.abspath(list_path))
    paths = []
    with open(list_path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            p = line.strip()
            if not p or p.startswith("#"):
                continue
            if not os.path.isabs(p):
                cand = os.path.join(base, p)
                p = cand if os.path.exists(cand) or not os.path.exists(p) else os.path.abspath(p)
            paths.append(p)
    return paths
