"""Images and labels real datasets contain: grayscale, 16-bit, alpha, CMYK, EXIF-rotated,
truncated, empty, not an image, 1x1, a header that claims 30000x30000; label files with CRLF,
extra columns, words, NaN, negative sizes. Each is used, skipped or clipped, counted in the one
summary line, and every sample the dataset gives is a finite image; never a traceback."""
from __future__ import annotations

import base64
import os
import re
import struct
import zlib

import cv2
import numpy as np
import pytest

from faultkit import TINY, TRAIN, run

# a 16x16 pure-red CMYK JPEG (made with Pillow, which the project does not need)
CMYK_JPG = zlib.decompress(base64.b64decode(
    "eNr7f+P/OwY+x5T8pFSGFAYQ+H+bwZmBmYkJhICABYhYOVhZWVhYudjZ2Th4uHh4uLm4uXn5hAR4+QT5uLkFxAQEhUVERUV5"
    "+MUlxEQkhERERf4fYBDhYBBgEGBxFmTwFWSIFGTwFmT4f4RBnoGBkZURDBiggJEJaAMbOwcnFzdQwVYBBiZGZmYmFmaQnUDZ"
    "WqA8A4sgq5CioSObcGAiu1KhiFHjxIUcyk4bD4oGXfygYpxU1MTJJSYuISmlqqauoallYmpmbmFp5ezi6ubu4ekVHBIaFh4R"
    "GZWckpqWnpGZVVxSWlZeUVnV3NLa1t7R2TVp8pSp06bPmDlr0eIlS5ctX7Fy1abNW7Zu275j565Dh48cPXb8xMlTly5fuXrt"
    "+o2btx4+evzk6bPnL16++vjp85ev377/+Pnr/y0GPhZnBl+GSAZvBgZ7hr/B60+t+rNq/VUrjUVdEPT/JgBCy3NJ"))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h pixels, with a tiny body (a decompression bomb's shape)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def exif_jpeg(img: np.ndarray, orientation: int) -> bytes:
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag."""
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00\x00\x00\x00")
    app1 = b"Exif\x00\x00" + tiff
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


BOX = "0 0.5 0.5 0.5 0.5\n"
WIDE = np.zeros((32, 48, 3), np.uint8)
WIDE[:, :24] = 255  # left half white: which way up it is shows
GREY = np.full((40, 40, 3), 90, np.uint8)
# name -> (file bytes, label text)
FILES = {
    "gray.png": (png(np.full((40, 30), 200, np.uint8)), BOX),
    "deep.png": (png(np.full((40, 30, 3), 32768, np.uint16)), BOX),
    "alpha.png": (png(np.dstack([GREY, np.full((40, 40), 7, np.uint8)])), BOX),
    "cmyk.jpg": (CMYK_JPG, BOX),
    "exif.jpg": (exif_jpeg(WIDE, 6), BOX),
    "one.png": (png(np.full((1, 1, 3), 255, np.uint8)), BOX),
    "truncated.jpg": (cv2.imencode(".jpg", np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()[:1500], BOX),
    "truncated.png": (png(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:2000], BOX),
    "empty.jpg": (b"", BOX),
    "text.jpg": (b"this is not an image\n", BOX),
    "huge.png": (huge_png(30000, 30000), BOX),
    "crlf.png": (png(GREY), "0 0.5 0.5 0.2 0.2\r\n1 0.3 0.3 0.1 0.1\r\n"),
    "cols.png": (png(GREY), "0 0.5 0.5 0.2 0.2 0.99\n"),
    "words.png": (png(GREY), "zero 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"),
    "nan.png": (png(GREY), "0 nan 0.5 0.2 0.2\n0 0.5 0.5 inf 0.2\n1 0.5 0.5 0.2 0.2\n"),
    "negative.png": (png(GREY), "0 0.5 0.5 -0.2 0.2\n1 0.5 0.5 0.2 0.2\n"),
    "outside.png": (png(GREY), "0 0.9 0.5 0.4 0.2\n"),
}


@pytest.fixture
def odd_set(tmp_path) -> str:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, (data, label) in FILES.items():
        (tmp_path / "images" / name).write_bytes(data)
        (tmp_path / "labels" / (os.path.splitext(name)[0] + ".txt")).write_bytes(label.encode())
    (tmp_path / "odd.txt").write_text("".join(f"images/{n}\n" for n in FILES))
    (tmp_path / "odd.data").write_text("classes=5\ntrain=odd.txt\nvalid=odd.txt\n")
    return str(tmp_path / "odd.txt")


def test_odd_images_and_labels_are_used_skipped_or_clipped_and_counted(odd_set):
    from yolo_slim.data.dataset import YoloDataset
    ds = YoloDataset(odd_set, 64, nc=5)
    used = sorted(os.path.basename(p) for p in ds.paths)
    assert used == sorted(set(FILES) - {"truncated.jpg", "truncated.png", "empty.jpg", "text.jpg",
                                        "huge.png"}), used
    s = ds.stats
    assert (s["missing_image"], s["truncated"], s["too_large"]) == (2, 2, 1), s
    assert (s["malformed"], s["empty_box"], s["clipped"], s["extra_columns"]) == (3, 1, 1, 1), s
    assert s["exif_orientation"] == 1, s
    for phrase in (r"2 truncated images skipped", r"1 images? over \d+ megapixels skipped",
                   r"1 images? with an EXIF rotation \(not applied, as darknet\)",
                   r"3 malformed label lines skipped", r"1 label lines? with more than 5 columns"):
        assert re.search(phrase, ds.summary), (phrase, ds.summary)
    by_name = {os.path.basename(p): i for i, p in enumerate(ds.paths)}
    assert len(ds.labels[by_name["crlf.png"]]) == 2 and len(ds.labels[by_name["words.png"]]) == 1
    # every image decodes to 3 channels of 8 bits, as stored (EXIF orientation not applied)
    for name, i in by_name.items():
        img = ds.load(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert img.shape[:2] == tuple(ds.hw0[i]), name
    exif = ds.load(by_name["exif.jpg"])
    assert exif.shape[:2] == (32, 48) and exif[:, :20].mean() > 200 and exif[:, 28:].mean() < 50
    assert abs(int(ds.load(by_name["deep.png"])[0, 0, 0]) - 128) <= 1
    b, g, r = ds.load(by_name["cmyk.jpg"])[8, 8].tolist()
    assert r > 200 and g < 60 and b < 60
    for augment in (False, True):
        ds.augment = augment
        for i in range(len(ds)):
            x, lab, _, _ = ds[i]
            assert x.shape[0] == 3 and np.isfinite(x.numpy()).all() and np.isfinite(lab.numpy()).all()


def test_read_image_follows_darknet(tmp_path):
    """read_image: 3 x 8 bits BGR, the stored orientation, None for what is not an image."""
    from yolo_slim.data.files import read_image
    (tmp_path / "e.jpg").write_bytes(exif_jpeg(WIDE, 6))
    assert cv2.imread(str(tmp_path / "e.jpg")).shape[:2] == (48, 32)  # OpenCV alone rotates
    assert read_image(str(tmp_path / "e.jpg")).shape == (32, 48, 3)
    (tmp_path / "t.jpg").write_bytes(b"text")
    assert read_image(str(tmp_path / "t.jpg")) is None


@pytest.mark.filterwarnings("ignore")
def test_training_and_detection_on_the_odd_set(odd_set, tmp_path, capsys):
    """One summary line, no traceback: the scripts run on it."""
    (tmp_path / "tiny.cfg").write_text(TINY)
    rc, out, err = run("train_sparse", capsys, "--cfg", str(tmp_path / "tiny.cfg"), "--data",
                       str(tmp_path / "odd.data"), "--epochs", "1", "--output-dir",
                       str(tmp_path / "run"), *TRAIN)
    assert rc == 0, err
    assert "Traceback" not in err and out.count("odd.txt: 12 images") == 2, out
    rc, out, err = run("detect", capsys, "--weights", str(tmp_path / "run" / "last.pt"), "--source",
                       odd_set, "--img-size", "64", "--output-dir", str(tmp_path / "det"),
                       "--device", "cpu")
    assert rc == 0, err
    assert "Traceback" not in err
    drawn = [f for f in os.listdir(tmp_path / "det") if not f.endswith((".json", ".txt"))]
    assert len(drawn) == 12 and "skipped" in err  # the 5 it cannot use, one warning each
