"""The synthetic shapes set: byte-identical for a seed, valid darknet layout and labels."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo_slim.data.dataset import YoloDataset, label_path_for, parse_data_file
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.data.synthetic import NAMES, SIZE_RANGE, _poly_mask, make_shapes_dataset, shape_polygon

REPO = Path(__file__).resolve().parents[1]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    data = make_shapes_dataset(str(out), 40, 10, 128, seed=3)
    return out, data


def read_labels(root: Path, split: str) -> list[np.ndarray]:
    out = []
    for rel in (root / f"{split}.txt").read_text().split():
        lab = Path(label_path_for(str(root / rel))).read_text().split("\n")
        out.append(np.array([[float(v) for v in line.split()] for line in lab if line]).reshape(-1, 5))
    return out


def test_same_seed_gives_identical_bytes_across_processes(shapes, tmp_path):
    root, _ = shapes
    cmd = [sys.executable, "-m", "yolo_slim.data.synthetic", "--out", str(tmp_path / "again"),
           "--n-train", "40", "--n-valid", "10", "--img-size", "128", "--seed", "3"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr
    a, b = tree_bytes(root), tree_bytes(tmp_path / "again")
    assert a.keys() == b.keys() and len(a) == 2 * 50 + 6
    assert [k for k in a if a[k] != b[k]] == []
    # another seed changes the images; a train image does not depend on the valid count
    make_shapes_dataset(str(tmp_path / "other"), 2, 1, 128, seed=4)
    make_shapes_dataset(str(tmp_path / "fewer"), 2, 1, 128, seed=3)
    img = "images/train/000001.jpg"
    assert (tmp_path / "other" / img).read_bytes() != a[img]
    assert (tmp_path / "fewer" / img).read_bytes() == a[img]


def test_darknet_layout(shapes):
    root, data = shapes
    assert data == str(root / "shapes.data")
    assert (root / "shapes.data").read_text() == ("classes=5\ntrain=train.txt\nvalid=valid.txt\n"
                                                  "names=shapes.names\n")
    assert (root / "shapes.names").read_text().split() == NAMES == [
        "circle", "square", "triangle", "star", "cross"]
    cfg = parse_data_file(data)
    assert cfg.classes == 5 and cfg.names == NAMES
    for split, n in (("train", 40), ("valid", 10)):
        rels = (root / f"{split}.txt").read_text().splitlines()
        assert rels == [f"images/{split}/{i:06d}.jpg" for i in range(n)]
        for rel in rels:
            assert cv2.imread(str(root / rel)).shape == (128, 128, 3)
            assert Path(label_path_for(str(root / rel))) == root / rel.replace("images", "labels").replace(".jpg", ".txt")
            assert Path(label_path_for(str(root / rel))).is_file()
    ds = YoloDataset(cfg.valid, 128, nc=5)  # the training side reads it without complaint
    assert len(ds) == 10 and ds.summary.endswith("no bad data")
    preview = cv2.imread(str(root / "preview.jpg"))
    assert preview.shape == (4 * 240, 4 * 240, 3)  # 16 tiles
    assert "circle" in (root / "README.txt").read_text()


def test_labels_valid_sizes_and_classes(shapes):
    root, _ = shapes
    train, valid = read_labels(root, "train"), read_labels(root, "valid")
    for lab in train + valid:
        assert 1 <= len(lab) <= 6
        assert np.all(lab[:, 0] == lab[:, 0].astype(int)) and lab[:, 0].min() >= 0 and lab[:, 0].max() < 5
        cx, cy, w, h = lab[:, 1:].T
        assert np.all(cx - w / 2 >= -1e-6) and np.all(cx + w / 2 <= 1 + 1e-6)
        assert np.all(cy - h / 2 >= -1e-6) and np.all(cy + h / 2 <= 1 + 1e-6)
        side = np.maximum(w, h)  # the larger box side is drawn from SIZE_RANGE
        assert np.all(side >= SIZE_RANGE[0] - 1e-5) and np.all(side <= SIZE_RANGE[1] + 1e-5)
    allv = np.concatenate(train)
    assert set(allv[:, 0].astype(int)) == set(range(5))
    side = np.maximum(allv[:, 3], allv[:, 4])
    assert side.min() < 0.12 and side.max() > 0.33  # the whole size range is used
    assert np.mean([len(x) for x in train]) > 2  # several objects per image
    # some boxes overlap (occlusion happens), none is thinner than a rotated cross/triangle allows
    assert allv[:, 3:].min() > 0.02
    overlaps = sum(_any_overlap(x) for x in train)
    assert overlaps >= 3


def _any_overlap(lab: np.ndarray) -> bool:
    xyxy = np.c_[lab[:, 1:3] - lab[:, 3:] / 2, lab[:, 1:3] + lab[:, 3:] / 2]
    for i in range(len(xyxy)):
        for j in range(i):
            iw = min(xyxy[i, 2], xyxy[j, 2]) - max(xyxy[i, 0], xyxy[j, 0])
            ih = min(xyxy[i, 3], xyxy[j, 3]) - max(xyxy[i, 1], xyxy[j, 1])
            if iw > 0 and ih > 0:
                return True
    return False


def test_label_box_is_tight_on_the_painted_pixels():
    """The box comes from the polygon's vertices; the pixels OpenCV paints for that polygon
    span the same box to within a pixel (the half-pixel centre convention is right)."""
    rng = np.random.default_rng(0)
    hw = (120, 160)
    excess = []
    for cls in range(len(NAMES)):
        for _ in range(20):
            poly = shape_polygon(rng, cls, hw)
            x1, y1, x2, y2 = np.r_[poly.min(0), poly.max(0)]
            ys, xs = np.nonzero(_poly_mask(poly, hw))
            # how far the painted pixels reach past the box on each side: pixel quantisation
            # plus OpenCV painting every pixel an edge touches gives 0..~1 px
            out = np.r_[x1 - xs.min(), y1 - ys.min(), xs.max() + 1 - x2, ys.max() + 1 - y2]
            assert np.all(out > -0.1) and np.all(out < 1.1)
            excess.append(out)
            side = max(x2 - x1, y2 - y1) / min(hw)
            assert SIZE_RANGE[0] - 1e-9 <= side <= SIZE_RANGE[1] + 1e-9
            assert 0 <= x1 and x2 <= hw[1] and 0 <= y1 and y2 <= hw[0]
    # ... and the same on both sides (~0.5 px); a half-pixel error would make it 0 vs 1
    left_top, right_bottom = np.mean(excess, 0).reshape(2, 2)
    assert np.all(np.abs(left_top - right_bottom) < 0.25)


def test_non_square_and_bad_output_dir(tmp_path):
    make_shapes_dataset(str(tmp_path / "wide"), 2, 1, (64, 96), seed=0)
    assert cv2.imread(str(tmp_path / "wide/images/train/000000.jpg")).shape == (64, 96, 3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(YoloSlimError, match="not empty"):
        make_shapes_dataset(str(tmp_path / "busy"), 2, 1, 64)
    # regenerating over an old set leaves no stale images behind
    make_shapes_dataset(str(tmp_path / "wide"), 1, 1, 64, seed=0)
    assert sorted(os.listdir(tmp_path / "wide/images/train")) == ["000000.jpg"]
