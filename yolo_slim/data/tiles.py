"""Cut large annotated photos into a darknet dataset of training-size tiles.

Aerial photos (thousands of pixels, trees 20-60 px) cannot be resized to a 416 network
input without shrinking every object below what the model sees; tiling keeps the pixel scale.
Boxes are Pascal VOC pixel corners, read as continuous coordinates (no +-1). A box crossing a
tile edge is clipped to the tile and kept only when a share of its area (default 0.6) lies
inside, so a sliver of a tree is never labelled as a tree. Every tile is exactly tile x tile:
a photo side shorter than the tile is kept whole and padded (bottom/right, grey 114 like the
letterbox), so objects keep their size in pixels in every tile.
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import cv2
import numpy as np

from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.data.augment import PAD_VALUE


@dataclass
class VocImage:
    width: int
    height: int
    names: list[str]
    boxes: np.ndarray  # [n, 4] float64 xmin, ymin, xmax, ymax in pixels


@dataclass
class Tile:
    source: str  # the photo's stem: splits are made by source, never by tile
    x0: int
    y0: int
    boxes: np.ndarray  # [n, 4] clipped, in tile pixels


def parse_voc(text: str, where: str = "<xml>") -> VocImage:
    """Size and boxes of a Pascal VOC annotation; a box outside the image is clipped to it."""
    try:
        root = ET.fromstring(text)
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        names, boxes = [], []
        for obj in root.iter("object"):
            names.append((obj.findtext("name") or "").strip())
            boxes.append([float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
    except (ET.ParseError, TypeError, ValueError) as e:
        raise YoloSlimError(f"{where}: not a Pascal VOC annotation ({e})") from None
    b = np.array(boxes, np.float64).reshape(-1, 4).clip(0, [w, h, w, h])
    if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
        raise YoloSlimError(f"{where}: a box of zero size (xmax <= xmin or ymax <= ymin)")
    return VocImage(w, h, names, b)


def tile_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Origins along one side: the fewest tiles whose neighbours overlap by at least `overlap`
    of a tile, spread evenly from 0 to size - tile (so the last one ends at the edge and all
    overlaps are equal up to a pixel). A side <= tile is one tile at 0."""
    if not 0 <= overlap < 1:
        raise YoloSlimError(f"tile overlap {overlap} must be in [0, 1)")
    if size <= tile:
        return [0]
    stride = max(1, tile - math.ceil(overlap * tile))  # the largest step keeping the overlap
    n = math.ceil((size - tile) / stride) + 1
    return [i * (size - tile) // (n - 1) for i in range(n)]


def clip_boxes(boxes: np.ndarray, x0: int, y0: int, w: int, h: int, min_share: float) -> np.ndarray:
    """Boxes clipped to the window (x0, y0, w, h), shifted to its origin; a box is kept when at
    least `min_share` of its area lies inside (and some does)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = np.stack([b[:, 0].clip(x0, x0 + w), b[:, 1].clip(y0, y0 + h),
                  b[:, 2].clip(x0, x0 + w), b[:, 3].clip(y0, y0 + h)], 1)
    inside = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = (inside > 0) & (inside >= min_share * area)
    return c[keep] - [x0, y0, x0, y0]


def tile_photo(source: str, ann: VocImage, tile: int, overlap: float, min_share: float) -> list[Tile]:
    """The tiles of one photo (row by row) with their boxes."""
    tw, th = min(tile, ann.width), min(tile, ann.height)
    return [Tile(source, x0, y0, clip_boxes(ann.boxes, x0, y0, tw, th, min_share))
            for y0 in tile_origins(ann.height, tile, overlap)
            for x0 in tile_origins(ann.width, tile, overlap)]


def crop_pad(img: np.ndarray, x0: int, y0: int, tile: int) -> np.ndarray:
    """The tile's pixels, padded bottom/right to tile x tile where the photo is smaller."""
    out = np.full((tile, tile, img.shape[2]), PAD_VALUE, img.dtype)
    crop = img[y0:y0 + tile, x0:x0 + tile]
    out[:crop.shape[0], :crop.shape[1]] = crop
    return out


def yolo_lines(boxes: np.ndarray, tile: int, cls: int = 0) -> str:
    """Darknet label text: 'cls cx cy w h' normalised to the (square) tile."""
    return "".join(f"{cls} {(x1 + x2) / 2 / tile:.6f} {(y1 + y2) / 2 / tile:.6f} "
                   f"{(x2 - x1) / tile:.6f} {(y2 - y1) / tile:.6f}\n" for x1, y1, x2, y2 in boxes)


def split_by_source(sources: list[str], valid: list[str]) -> tuple[list[str], list[str]]:
    """(train, valid) source lists: whole photos go to one side, so no validation pixel is
    ever trained on (overlapping tiles of one photo share pixels)."""
    unknown = sorted(set(valid) - set(sources))
    if unknown:
        raise YoloSlimError(f"validation sources {unknown} are not among the photos {sorted(sources)}")
    train = [s for s in sources if s not in valid]
    if not train or not valid:
        raise YoloSlimError(f"the split needs a photo on each side (train {train}, valid {valid})")
    return train, [s for s in sources if s in valid]


def write_tile_dataset(photos: dict[str, tuple[str, str]], out_dir: str, name: str, cls_name: str,
                       tile: int, overlap: float, min_share: float, valid: list[str],
                       meta: dict | None = None) -> dict:
    """Write a one-class darknet set from {source: (image path, VOC xml path)} into out_dir
    (images/, labels/, train.txt, valid.txt, <name>.names, <name>.data, manifest.json with
    `meta` first); every VOC class name becomes class 0. Every tile gets a label file, empty
    when no box is kept (a negative). Returns the manifest."""
    if not 0 <= min_share <= 1:
        raise YoloSlimError(f"min share {min_share} of a box inside its tile must be in [0, 1]")
    train, val = split_by_source(sorted(photos), valid)
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    man: dict = {**(meta or {}), "tile": tile, "overlap": overlap, "min_share": min_share,
                 "classes": [cls_name], "split": {"train": train, "valid": val}, "sources": {}}
    lists: dict[str, list[str]] = {"train": [], "valid": []}
    for src in sorted(photos):
        img_path, xml_path = photos[src]
        with open(xml_path, encoding="utf-8") as f:
            ann = parse_voc(f.read(), xml_path)
        img = cv2.imread(img_path, cv2.IMREAD_COLOR)
        if img is None or img.shape[:2] != (ann.height, ann.width):
            raise YoloSlimError(f"{img_path}: unreadable or not the {ann.width}x{ann.height} of {xml_path}")
        split = "train" if src in train else "valid"
        tiles = tile_photo(src, ann, tile, overlap, min_share)
        for t in tiles:
            rel = f"images/{src}_x{t.x0}_y{t.y0}.png"
            png = cv2.imencode(".png", crop_pad(img, t.x0, t.y0, tile))[1]
            atomic_write_bytes(os.path.join(out_dir, rel), png.tobytes())
            atomic_write_bytes(os.path.join(out_dir, f"labels/{src}_x{t.x0}_y{t.y0}.txt"),
                               yolo_lines(t.boxes, tile).encode())
            lists[split].append(rel)
        man["sources"][src] = {"size": [ann.width, ann.height], "boxes": len(ann.boxes),
                               "split": split, "tiles": len(tiles),
                               "tile_boxes": sum(len(t.boxes) for t in tiles)}
    for split, rels in lists.items():
        atomic_write_bytes(os.path.join(out_dir, f"{split}.txt"), "".join(r + "\n" for r in rels).encode())
        srcs = [s for s in man["sources"].values() if s["split"] == split]
        man[split] = {"tiles": len(rels), "boxes": sum(s["tile_boxes"] for s in srcs),
                      "photo_boxes": sum(s["boxes"] for s in srcs)}
    atomic_write_bytes(os.path.join(out_dir, f"{name}.names"), f"{cls_name}\n".encode())
    atomic_write_bytes(os.path.join(out_dir, f"{name}.data"),
                       f"classes=1\ntrain=train.txt\nvalid=valid.txt\nnames={name}.names\n".encode())
    atomic_write_bytes(os.path.join(out_dir, "manifest.json"), (json.dumps(man, indent=1) + "\n").encode())
    return man
