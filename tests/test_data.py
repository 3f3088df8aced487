"""Darknet data loading: .data parsing, the label path rule, bad-data accounting, letterbox and
augmentation keeping boxes on their pixels, rect batches, the epoch sampler."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from yolo_slim.data.dataset import (Augment, EpochSampler, YoloDataset, collate_fn, create_dataloader,
                            image_hw, label_path_for, parse_data_file)
from yolo_slim.core.errors import YoloSlimError

NO_AUG = Augment(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0, scale=0, translate=0, mosaic=0)


def write_image(root, name: str, hw: tuple[int, int], boxes_px=(), label: str | None = None) -> str:
    """A black image with white filled rectangles; label lines from the boxes unless given."""
    img = np.zeros((*hw, 3), np.uint8)
    lines = []
    for c, x1, y1, x2, y2 in boxes_px:
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), -1)
        lines.append(f"{c} {(x1 + x2) / 2 / hw[1]} {(y1 + y2) / 2 / hw[0]} "
                     f"{(x2 - x1) / hw[1]} {(y2 - y1) / hw[0]}")
    path = os.path.join(root, "images", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, img)
    lp = label_path_for(path)
    os.makedirs(os.path.dirname(lp), exist_ok=True)
    if label is not False:
        with open(lp, "w") as f:
            f.write(label if label is not None else "\n".join(lines) + "\n")
    return path


def write_list(root, paths, name="list.txt") -> str:
    p = os.path.join(root, name)
    with open(p, "w") as f:
        f.write("".join(os.path.relpath(x, root) + "\n" for x in paths))
    return p


def test_parse_data_file(tmp_path):
    (tmp_path / "n.names").write_text("a\nb\n\n")
    (tmp_path / "x.data").write_text("# c\nclasses = 2\ntrain = tr.txt\nvalid=/abs/va.txt\nnames=n.names\n")
    d = parse_data_file(str(tmp_path / "x.data"))
    assert (d.classes, d.names) == (2, ["a", "b"])
    assert d.train == str(tmp_path / "tr.txt") and d.valid == "/abs/va.txt"
    (tmp_path / "bad.data").write_text("classes=2\ntrain=t\nclasses two\n")
    with pytest.raises(YoloSlimError, match=r"bad\.data:3"):
        parse_data_file(str(tmp_path / "bad.data"))
    (tmp_path / "bad2.data").write_text("classes=x\ntrain=t\n")
    with pytest.raises(YoloSlimError, match=r"bad2\.data:1: classes=x"):
        parse_data_file(str(tmp_path / "bad2.data"))
    (tmp_path / "bad3.data").write_text("classes=3\ntrain=t\nnames=n.names\n")
    with pytest.raises(YoloSlimError, match="has 2 names, classes=3"):
        parse_data_file(str(tmp_path / "bad3.data"))
    with pytest.raises(YoloSlimError, match="missing 'train='"):
        (tmp_path / "bad4.data").write_text("classes=3\n")
        parse_data_file(str(tmp_path / "bad4.data"))


def test_label_path_rule():
    assert label_path_for("/d/images/train/a.jpg") == "/d/labels/train/a.txt"
    assert label_path_for("/images/x/images/b.PNG") == "/images/x/labels/b.txt"
    assert label_path_for("rel/c.jpeg") == "rel/c.txt"


def test_image_hw_from_header(tmp_path):
    for ext in (".jpg", ".png", ".bmp"):
        p = str(tmp_path / f"a{ext}")
        cv2.imwrite(p, np.zeros((37, 53, 3), np.uint8))
        assert image_hw(p) == (37, 53)
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    assert image_hw(str(tmp_path / "junk.jpg")) is None


def test_bad_data_counted_skipped_clipped(tmp_path, capsys):
    r = str(tmp_path)
    good = write_image(r, "a.jpg", (64, 64), [(1, 8, 8, 24, 40)])
    nolabel = write_image(r, "b.jpg", (64, 64), label=False)
    mixed = write_image(r, "c.png", (64, 64), label=(
        "0 0.5 0.5 0.2 0.2\n"        # fine
        "7 0.5 0.5 0.2 0.2\n"        # class out of range (nc=3)
        "-1 0.5 0.5 0.2 0.2\n"       # negative class
        "1 0.5 0.5\n"                # malformed: 3 fields
        "x 0.5 0.5 0.1 0.1\n"        # malformed: not a number
        "2 0.95 0.5 0.2 0.4\n"       # sticks out right: clipped to x in [0.85, 1]
        "2 1.5 0.5 0.2 0.2\n"))      # entirely outside: clipped to nothing, skipped
    junk = os.path.join(r, "images", "d.jpg")
    with open(junk, "wb") as f:
        f.write(b"garbage")
    lst = write_list(r, [good, nolabel, mixed, junk, os.path.join(r, "images", "missing.jpg")])
    loader, ds = create_dataloader(lst, 64, 4, augment=False, workers=0, nc=3)
    out = capsys.readouterr().out
    assert len(ds) == 3
    assert ds.stats == {"missing_image": 2, "missing_label": 1, "bad_class": 2, "malformed": 2,
                        "clipped": 2, "empty_box": 1, "truncated": 0, "too_large": 0,
                        "exif_orientation": 0, "extra_columns": 0}
    line = [x for x in out.splitlines() if x.startswith("list.txt")]
    assert len(line) == 1 and "3 images, 3 boxes" in line[0]
    assert "2 missing/unreadable images skipped" in line[0] and "c.txt:2" in line[0]
    lab = ds.labels[ds.paths.index(mixed)]
    np.testing.assert_allclose(lab, [[0, 0.5, 0.5, 0.2, 0.2], [2, 0.925, 0.5, 0.15, 0.4]], atol=1e-6)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.shape == (3, 3, 64, 64) and targets.shape == (3, 6)
    assert targets[:, 0].tolist() == [0, 2, 2]  # image index in the batch


def test_no_readable_images_is_an_error(tmp_path):
    lst = write_list(str(tmp_path), [str(tmp_path / "images" / "nope.jpg")])
    with pytest.raises(YoloSlimError, match="no readable images"):
        YoloDataset(lst, 64)


def test_letterbox_maps_boxes_and_rect_shapes(tmp_path):
    r = str(tmp_path)
    # 40 x 80 (h x w) image, box x 10..30, y 4..20 -> scale 0.8 to 32 x 64, pad 16 top/bottom
    wide = write_image(r, "w.png", (40, 80), [(0, 10, 4, 30, 20)])
    ds = YoloDataset(write_list(r, [wide]), 64, augment=False)
    img, lab, path, ((h0, w0), (ratio, (padw, padh))) = ds[0]
    assert img.shape == (3, 64, 64) and (h0, w0, ratio, padw, padh) == (40, 80, 0.8, 0.0, 16.0)
    np.testing.assert_allclose(lab[0].numpy(), [0, 0, 16 / 64, (12 * 0.8 + 16) / 64, 16 / 64, 12.8 / 64],
                               atol=1e-6)
    assert abs(img[:, 0, 0].mean().item() - 114 / 255) < 1e-6  # grey padding
    rect = YoloDataset(write_list(r, [wide]), 64, augment=False, rect=True)
    img, lab, _, (_, (ratio, (padw, padh))) = rect[0]
    assert img.shape == (3, 32, 64) and (padw, padh) == (0.0, 0.0)
    np.testing.assert_allclose(lab[0, 2:].numpy(), [20 / 80, 12 / 40, 20 / 80, 16 / 40], atol=1e-6)


def test_letterbox_tall_image_pads_left_and_right(tmp_path):
    """A tall image gets its padding on the left and right, so the left pad enters x.
    80 x 40 (h x w), box x 10..30, y 4..20 (label cx .5, cy .15, w .5, h .2) into 64 x 64:
    scale 0.8 -> 64 x 32, padw (64 - 32) / 2 = 16 left and right, no top pad. Box in the input:
    x 16 + 0.8 x (10..30) = 24..40, y 0.8 x (4..20) = 3.2..16 -> cx 32/64, cy 9.6/64,
    w 16/64, h 12.8/64. Ignoring the left pad would put cx at 16/64."""
    r = str(tmp_path)
    tall = write_image(r, "t.png", (80, 40), [(0, 10, 4, 30, 20)])
    ds = YoloDataset(write_list(r, [tall]), 64, augment=False)
    img, lab, _, ((h0, w0), (ratio, (padw, padh))) = ds[0]
    assert img.shape == (3, 64, 64) and (h0, w0, ratio, padw, padh) == (80, 40, 0.8, 16.0, 0.0)
    np.testing.assert_allclose(lab[0].numpy(), [0, 0, 32 / 64, 9.6 / 64, 16 / 64, 12.8 / 64], atol=1e-6)
    # the label sits on the drawn rectangle's pixels: white columns 24..39, grey pad outside
    white_cols = np.flatnonzero((img.min(0).values > 0.9).any(0).numpy())
    assert (white_cols.min(), white_cols.max()) == (24, 39)
    assert abs(img[:, 32, :16].mean().item() - 114 / 255) < 1e-6  # left pad
    assert abs(img[:, 32, 48:].mean().item() - 114 / 255) < 1e-6  # right pad
    # rect batches: a tall batch gets narrower (64 x 32), so no pad and the same normalised box
    rect = YoloDataset(write_list(r, [tall]), 64, augment=False, rect=True)
    img, lab, _, (_, (ratio, (padw, padh))) = rect[0]
    assert img.shape == (3, 64, 32) and (ratio, padw, padh) == (0.8, 0.0, 0.0)
    np.testing.assert_allclose(lab[0, 2:].numpy(), [20 / 40, 12 / 80, 20 / 40, 16 / 80], atol=1e-6)


def test_detections_map_back_through_the_left_pad():
    """detect's inverse of the tall letterbox above: x0 = (x - padw) / ratio, y0 = (y - padh) / ratio."""
    from yolo_slim.eval.detect import scale_to_original
    det = torch.tensor([[24.0, 3.2, 40.0, 16.0, 0.9, 0.0]])
    back = scale_to_original(det, 0.8, (16.0, 0.0), (80, 40))
    np.testing.assert_allclose(back.numpy(), [[10, 4, 30, 20, 0.9, 0]], atol=1e-5)


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_augmentation_keeps_boxes_on_their_pixels(tmp_path, mosaic):
    r = str(tmp_path)
    paths = [write_image(r, f"{i}.png", (48 + 16 * i, 64), [(i, 8 + 4 * i, 10, 30 + 4 * i, 36)])
             for i in range(4)]
    aug = Augment(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, scale=0.3, translate=0.2, mosaic=mosaic)
    ds = YoloDataset(write_list(r, paths), 96, augment=True, aug=aug, seed=3)
    checked = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, lab, _, _ = ds[i]
            assert img.shape == (3, 96, 96)
            assert ((lab[:, 2:4] >= 0) & (lab[:, 2:4] <= 1)).all()
            white = (img.min(0).values > 0.9).numpy()
            for _, c, cx, cy, w, h in lab.tolist():
                x1, y1, x2, y2 = ((cx - w / 2) * 96, (cy - h / 2) * 96, (cx + w / 2) * 96, (cy + h / 2) * 96)
                inner = white[int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2]
                assert inner.size == 0 or inner.mean() > 0.95  # the box covers the rectangle
                checked += 1
            if not mosaic and len(lab) == 1:  # one object: the white pixels are exactly the box
                ys, xs = np.nonzero(white)
                _, _, cx, cy, w, h = lab[0].tolist()
                assert abs(xs.min() - (cx - w / 2) * 96) < 2.0 and abs(xs.max() + 1 - (cx + w / 2) * 96) < 2.0
                assert abs(ys.min() - (cy - h / 2) * 96) < 2.0 and abs(ys.max() + 1 - (cy + h / 2) * 96) < 2.0
    assert checked >= 8


def test_augmentation_is_deterministic_per_seed_epoch_index(tmp_path):
    r = str(tmp_path)
    paths = [write_image(r, f"{i}.jpg", (64, 64), [(0, 8, 8, 40, 40)]) for i in range(2)]
    ds = YoloDataset(write_list(r, paths), 64, augment=True, aug=Augment(mosaic=0.5), seed=1)
    a = ds[1][0]
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], a)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a)


def test_image_cache_gives_the_same_samples_and_is_bounded(tmp_path):
    r = str(tmp_path)
    paths = [write_image(r, f"{i}.png", (64 + 32 * i, 96), [(i, 8, 8, 40, 40)]) for i in range(3)]
    lst = write_list(r, paths)
    aug = Augment(mosaic=0.7)
    plain = YoloDataset(lst, 64, augment=True, aug=aug, seed=2)
    cached = YoloDataset(lst, 64, augment=True, aug=aug, seed=2, cache_mb=1)
    small = YoloDataset(lst, 64, augment=True, aug=aug, seed=2, cache_mb=0)
    small._cache_left = 64 * 43 * 3  # room for the first (64x43) resized image only
    for epoch in range(3):
        for ds in (plain, cached, small):
            ds.set_epoch(epoch)
        for i in range(3):
            a, la, _, _ = plain[i]
            for ds in (cached, small):
                b, lb, _, _ = ds[i]
                assert torch.equal(a, b) and torch.equal(la, lb)
    assert sorted(cached._cache) == [0, 1, 2] and plain._cache == {}
    assert [cached._cache[i].shape for i in range(3)] == [(43, 64, 3), (64, 64, 3), (64, 48, 3)]
    assert not any(im.flags.writeable for im in cached._cache.values())
    assert list(small._cache) == [0] and small._cache_left == 0


def test_epoch_sampler_partitions_and_repeats():
    s0, s1 = EpochSampler(10, True, seed=5, rank=0, world=2), EpochSampler(10, True, seed=5, rank=1, world=2)
    for s in (s0, s1):
        s.set_epoch(3)
    a, b = list(s0), list(s1)
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))
    s0.set_epoch(3)
    assert list(s0) == a
    s0.set_epoch(4)
    assert list(s0) != a
    assert list(EpochSampler(5, False, rank=1, world=2)) == [1, 3, 0]  # padded by wrapping


def test_collate_sets_image_index():
    batch = [(torch.zeros(3, 32, 32), torch.ones(n, 6), f"p{n}", None) for n in (2, 0, 1)]
    imgs, t, paths, _ = collate_fn(batch)
    assert imgs.shape == (3, 3, 32, 32) and t[:, 0].tolist() == [0, 0, 2] and paths == ("p2", "p0", "p1")
