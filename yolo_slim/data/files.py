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


MAX_PIXELS = 1 << 27  # 134 megapixels, ~400 MB decoded: above it an image is skipped, not decoded


def read_image(path: str) -> np.ndarray | None:
    """An image as darknet reads it: 3 channels of 8 bits (BGR here), grey repeated, alpha
    dropped, 16 bits scaled down, CMYK converted, the *stored* orientation (darknet's stb_image
    ignores EXIF rotation, and labels made for darknet follow the stored pixels); None when the
    file is not a readable image."""
    return cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def _exif_orientation(app1: bytes) -> int:
    """The Orientation tag (1 = as stored) of an APP1 Exif segment's first IFD."""
    try:
        tiff = app1[6:]
        bo = "<" if tiff[:2] == b"II" else ">"
        off = struct.unpack(bo + "I", tiff[4:8])[0]
        for k in range(struct.unpack(bo + "H", tiff[off:off + 2])[0]):
            tag, _, _, value = struct.unpack(bo + "HHIH", tiff[off + 2 + 12 * k:off + 12 + 12 * k])
            if tag == 0x0112:
                return value
    except struct.error:
        pass
    return 1


def _complete(path: str, kind: str) -> bool:
    """Does the file hold its end marker (JPEG EOI after the scan, PNG IEND)? Only the tail is
    read unless data follows the marker (a phone's motion photo appends a video)."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 16))
        tail = f.read().rstrip(b"\0\r\n ")
        if tail.endswith(b"\xff\xd9") if kind == "jpeg" else b"IEND" in tail:
            return True
        f.seek(0)
        data = f.read()
    if kind == "png":
        return b"IEND" in data
    sos = data.find(b"\xff\xda")  # scan data never holds FF D9: byte stuffing
    return sos >= 0 and data.find(b"\xff\xd9", sos) >= 0


def probe_image(path: str) -> tuple[tuple[int, int] | None, str, bool]:
    """((h, w), problem, EXIF-rotated) from the file's header, without decoding PNG/JPEG (other
    formats are decoded). problem: "" (usable), "missing_image" (unreadable, empty, not an
    image), "truncated" (no end marker) or "too_large" (over MAX_PIXELS: never decoded)."""
    hw, kind, rotated = None, "", False
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            w, h = struct.unpack(">II", head[16:24])
            hw, kind = (int(h), int(w)), "png"
        elif head[:2] == b"\xff\xd8":
            kind, i = "jpeg", 2
            while i + 9 < len(head) and head[i] == 0xFF:
                marker = head[i + 1]
                seglen = struct.unpack(">H", head[i + 2:i + 4])[0]
                if marker == 0xE1 and head[i + 4:i + 10] == b"Exif\0\0":
                    rotated = _exif_orientation(head[i + 4:i + 2 + seglen]) != 1
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", head[i + 5:i + 9])
                    hw = int(h), int(w)
                    break
                i += 2 + seglen
        if hw and hw[0] * hw[1] > MAX_PIXELS:
            return hw, "too_large", rotated
        if kind and hw and not _complete(path, kind):
            return hw, "truncated", rotated
    except OSError:
        return None, "missing_image", False
    if hw is None:
        img = read_image(path)
        hw = None if img is None else img.shape[:2]
    return hw, "" if hw and min(hw) >= 1 else "missing_image", rotated


def image_hw(path: str) -> tuple[int, int] | None:
    """(h, w) from a PNG/JPEG header without decoding; falls back to a full decode."""
    return probe_image(path)[0]


class BadData:
    """Counts of each bad-data case, with the first example of each for the summary line."""
    CASES = {"missing_image": "missing/unreadable images skipped",
             "missing_label": "images without a label file (no objects)",
             "bad_class": "label lines with a class out of range skipped",
             "malformed": "malformed label lines skipped",
             "truncated": "truncated images skipped",
             "too_large": f"images over {MAX_PIXELS // 10**6} megapixels skipped (tile them)",
             "exif_orientation": "images with an EXIF rotation (not applied, as darknet)",
             "extra_columns": "label lines with more than 5 columns (first 5 used)",
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
            if len(parts) > 5:  # a score column, say; darknet's fscanf would misread the file
                bad.add("extra_columns", where)
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
