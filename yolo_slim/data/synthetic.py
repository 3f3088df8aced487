"""The embedded default dataset: deterministic synthetic shapes in the darknet layout.

  python -m yolo_slim.data.synthetic --out data/shapes [--n-train 800 --n-valid 200 --img-size 320]

Every image comes from its own RNG seeded with (seed, split, index), so an image does not
change when the other split's size changes, and the same seed gives byte-identical files
(OpenCV's JPEG encoder is deterministic for a fixed quality). Labels are the tight box of the
drawn polygon, computed from its vertices, never from pixels.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Callable, Sequence

import cv2
import numpy as np

from yolo_slim.core.draw import draw_boxes
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main

NAMES = ["circle", "square", "triangle", "star", "cross"]
SIZE_RANGE = (0.05, 0.40)  # larger box side / shorter image side
MAX_OBJECTS = 6
MIN_VISIBLE = 0.6  # every labelled object keeps at least this fraction of its own pixels
MAX_ROTATION = 30.0  # degrees, for every shape but the circle
JPEG_QUALITY = 90
_SPLIT_CODE = {"train": 1, "valid": 2}


# Unit shapes: polygon vertices around (0, 0), roughly radius 1; the caller rotates and scales.
def _circle(rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _square(rng: np.random.Generator) -> np.ndarray:
    return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)


def _triangle(rng: np.random.Generator) -> np.ndarray:
    t = np.deg2rad([-90, 30, 150])
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star(rng: np.random.Generator) -> np.ndarray:
    inner = rng.uniform(0.38, 0.5)  # thinner or fatter points, still clearly a star
    t = np.deg2rad(-90 + 36 * np.arange(10))
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _cross(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0.2, 0.32)  # half arm width
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                     [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)


SHAPES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "cross": _cross}


def _poly_mask(poly: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    _fill(m, poly, 1, aa=False)
    return m.astype(bool)


def _fill(img: np.ndarray, poly: np.ndarray, color, aa: bool = True) -> None:
    # vertices are in pixel-edge coordinates (0..W); OpenCV puts pixel centres on integers,
    # hence -0.5. shift=4 keeps 1/16-pixel precision so the label box matches the drawing.
    pts = np.round((poly - 0.5) * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA if aa else cv2.LINE_8, shift=4)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + low-frequency colour noise + clutter (lines, blobs, non-class polygons)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = c0.astype(np.float32), c1.astype(np.float32)
    img = c0 + (c1 - c0) * t[..., None]
    low = rng.uniform(-35, 35, (4, 4, 3)).astype(np.float32)
    img += cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    s = min(h, w)
    for _ in range(rng.integers(2, 7)):  # translucent blobs
        over = img.copy()
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.uniform(0.05, 0.3) * s), int(rng.uniform(0.05, 0.3) * s))
        cv2.ellipse(over, center, axes, float(rng.uniform(0, 180)), 0, 360,
                    rng.uniform(0, 255, 3).tolist(), -1, cv2.LINE_AA)
        a = rng.uniform(0.2, 0.5)
        img = cv2.addWeighted(over, a, img, 1 - a, 0)
    for _ in range(rng.integers(0, 3)):  # hard negatives: irregular polygons of no class
        n = int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.4, 1.0, n) * rng.uniform(0.04, 0.15) * s
        c = rng.uniform(0.1, 0.9, 2) * (w, h)
        _fill(img, np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)], 1),
              rng.uniform(0, 255, 3).tolist())
    for _ in range(rng.integers(3, 12)):  # lines
        p = rng.uniform(0, 1, 4) * (w, h, w, h)
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])),
                 rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _contrasting_color(rng: np.random.Generator, bg_mean: np.ndarray) -> list[float]:
    for _ in range(30):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - bg_mean).sum() > 150:  # enough contrast to be seen by a small model
            break
    return c.tolist()


def shape_polygon(rng: np.random.Generator, cls: int, hw: tuple[int, int]) -> np.ndarray:
    """Vertices (pixel-edge coordinates) of one randomly rotated, sized and placed shape whose
    larger box side is SIZE_RANGE of the shorter image side, fully inside the image."""
    h, w = hw
    unit = SHAPES[NAMES[cls]](rng)
    if NAMES[cls] != "circle":  # a rotated circle is the same circle
        a = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        unit = unit @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    ext = unit.max(0) - unit.min(0)
    side = rng.uniform(*SIZE_RANGE) * min(h, w)
    poly = (unit - unit.min(0)) * (side / ext.max())
    return poly + rng.uniform(0, 1, 2) * ((w, h) - poly.max(0))


def render_image(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One BGR image and its objects as (class, box x1 y1 x2 y2 in pixels)."""
    h, w = hw
    img = _background(rng, h, w)
    objects: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # (cls, box, visible, full)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(NAMES)))
        for _attempt in range(20):
            poly = shape_polygon(rng, cls, hw)
            mask = _poly_mask(poly, (h, w))
            # a new object paints over older ones: keep each older one >= MIN_VISIBLE visible
            if all((vis & ~mask).sum() >= MIN_VISIBLE * full for _, _, vis, full in objects):
                break
        else:
            continue
        box = np.concatenate([poly.min(0), poly.max(0)])
        x1, y1, x2, y2 = np.clip(box.astype(int), 0, (w - 1, h - 1, w - 1, h - 1))
        color = _contrasting_color(rng, img[y1:y2 + 1, x1:x2 + 1].reshape(-1, 3).mean(0))
        _fill(img, poly, color)
        if rng.uniform() < 0.25:  # a darker outline on some objects
            pts = np.round((poly - 0.5) * 16).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], True, [c * 0.4 for c in color], 1,
                          cv2.LINE_AA, shift=4)
        objects = [(c, b, v & ~mask, f) for c, b, v, f in objects]
        objects.append((cls, box, mask, int(mask.sum())))
    if rng.uniform() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(3, 12))
    img = np.clip(noise + img, 0, 255).astype(np.uint8)
    return img, [(c, b) for c, b, _, _ in objects]


def label_lines(objects: list[tuple[int, np.ndarray]], hw: tuple[int, int]) -> str:
    h, w = hw
    out = []
    for cls, (x1, y1, x2, y2) in objects:
        out.append(f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                   f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
    return "".join(out)


def _encode(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise YoloSlimError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def _prepare_out_dir(out_dir: str) -> None:
    # Refuse to mix the set into an unrelated non-empty folder; regenerate over an old set.
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(os.path.join(out_dir, "shapes.data")):
            raise YoloSlimError(f"{out_dir} is not empty and holds no shapes.data; "
                                "choose an empty or new folder")
        for sub in ("images", "labels"):
            shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
    for split in _SPLIT_CODE:
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(out_dir, sub, split), exist_ok=True)


def _as_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (int(img_size), int(img_size)) if np.isscalar(img_size) else tuple(int(v) for v in img_size)
    if len(hw) != 2 or min(hw) < 32:
        raise YoloSlimError(f"image size {img_size} must be one side or (h, w), each >= 32")
    return hw  # type: ignore[return-value]


def make_shapes_dataset(out_dir: str, n_train: int = 800, n_valid: int = 200,
                        img_size: int | Sequence[int] = 320, seed: int = 0) -> str:
    """Write the synthetic set to out_dir and return the path of its .data file."""
    hw = _as_hw(img_size)
    if n_train < 1 or n_valid < 1:
        raise YoloSlimError(f"need at least one train and one valid image (got {n_train}, {n_valid})")
    _prepare_out_dir(out_dir)
    counts = {s: [0] * len(NAMES) for s in _SPLIT_CODE}
    preview: list[tuple[np.ndarray, list]] = []
    for split, n in (("train", n_train), ("valid", n_valid)):
        rels = []
        for i in range(n):
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
            img, objects = render_image(rng, hw)
            rel = f"images/{split}/{i:06d}.jpg"
            atomic_write_bytes(os.path.join(out_dir, rel), _encode(img))
            atomic_write_bytes(os.path.join(out_dir, f"labels/{split}/{i:06d}.txt"),
                               label_lines(objects, hw).encode())
            rels.append(rel)
            for c, _ in objects:
                counts[split][c] += 1
            if split == "train" and len(preview) < 16:
                preview.append((img, objects))
        atomic_write_bytes(os.path.join(out_dir, f"{split}.txt"), "".join(r + "\n" for r in rels).encode())
    atomic_write_bytes(os.path.join(out_dir, "shapes.names"), "".join(n + "\n" for n in NAMES).encode())
    data = os.path.join(out_dir, "shapes.data")
    atomic_write_bytes(data, f"classes={len(NAMES)}\ntrain=train.txt\nvalid=valid.txt\n"
                             f"names=shapes.names\n".encode())
    atomic_write_bytes(os.path.join(out_dir, "preview.jpg"), _encode(preview_mosaic(preview)))
    atomic_write_bytes(os.path.join(out_dir, "README.txt"),
                       _readme(n_train, n_valid, hw, seed, counts).encode())
    return data


def preview_mosaic(items: list[tuple[np.ndarray, list]], tile: int = 240, cols: int = 4) -> np.ndarray:
    rows = max(1, (len(items) + cols - 1) // cols)
    mosaic = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for k, (img, objects) in enumerate(items):
        drawn = draw_boxes(img, [(c, *b) for c, b in objects], NAMES)
        r, c = divmod(k, cols)
        mosaic[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = cv2.resize(drawn, (tile, tile))
    return mosaic


def _readme(n_train: int, n_valid: int, hw: tuple[int, int], seed: int, counts: dict) -> str:
    per = "\n".join(f"  {s:5s}: " + ", ".join(f"{NAMES[c]} {n}" for c, n in enumerate(v))
                    for s, v in counts.items())
    return f"""Synthetic shapes detection set (yolo-slim), darknet layout.
Regenerate byte-identically (same OpenCV/numpy versions): python -m yolo_slim.data.synthetic --out <dir> --n-train {n_train} \
--n-valid {n_valid} --img-size {hw[0] if hw[0] == hw[1] else f'{hw[0]} {hw[1]}'} --seed {seed}

shapes.data   classes, train/valid image lists, names (paths relative to this folder)
images/<split>/NNNNNN.jpg, labels/<split>/NNNNNN.txt: one 'cls cx cy w h' line per object,
              normalised to the image; the label path is the image path with images/ -> labels/
preview.jpg   the first 16 train images with their label boxes

Images: {hw[1]}x{hw[0]} px (w x h), JPEG quality {JPEG_QUALITY}. Classes: {', '.join(NAMES)}.
Each image: gradient + low-frequency colour noise background, translucent blobs, lines and
0-2 irregular polygons of no class (hard negatives), then 1-{MAX_OBJECTS} objects with random
colours contrasting with the local background, larger box side {SIZE_RANGE[0]:.0%}-{SIZE_RANGE[1]:.0%} of
the shorter image side, rotated up to +-{MAX_ROTATION:.0f} deg (not circles), some outlined; then
Gaussian noise (sigma 3-12) and sometimes a slight blur. Boxes are the tight boxes of the drawn
polygons. Objects may overlap: a placement is accepted only if every earlier object keeps at
least {MIN_VISIBLE:.0%} of its pixels visible (else it is retried, then dropped), so each labelled
object stays mostly visible.

Objects per class:
{per}
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    """The flags (one-line errors, exit 2: core.cli.Parser); None after --help."""
    from yolo_slim.core.cli import Parser, number, parse
    p = Parser(prog="python -m yolo_slim.data.synthetic",
               description="Write the synthetic shapes detection set.")
    p.add_argument("--out", default="data/shapes", help="output folder")
    p.add_argument("--n-train", type=number(int, min=1), default=800)
    p.add_argument("--n-valid", type=number(int, min=1), default=200)
    p.add_argument("--img-size", type=number(int, min=32), nargs="+", default=[320], help="S or H W")
    p.add_argument("--seed", type=int, default=0)
    return parse(p, argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a is None:  # --help
        return 0
    size = a.img_size[0] if len(a.img_size) == 1 else a.img_size
    data = make_shapes_dataset(a.out, a.n_train, a.n_valid, size, a.seed)
    print(f"wrote {a.n_train} train + {a.n_valid} valid images; data file: {data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
