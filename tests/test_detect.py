"""detect: letterbox -> model -> NMS -> original-image boxes, drawn images and detection files."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.eval.detect import detect_image, list_sources, run_detect
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.nn.model import Darknet
from yolo_slim.data.synthetic import make_shapes_dataset
from yolo_slim.nn.weights import save_checkpoint

from cfgs import ANCHORS_10, conv_section, maxpool_section, tiny_detector_cfg

TINY_CFG = tiny_detector_cfg(conv_section(8, 3, 2), conv_section(8, 3, 2), maxpool_section(2, 2),
                             anchors=ANCHORS_10, channels=3, head_pad=None)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Darknet(parse_cfg_text(TINY_CFG, "tiny.cfg"))


class HandSet(torch.nn.Module):
    """Eval-mode output fixed by hand: one box at (32, 32) size 16x8 in letterboxed pixels."""
    num_classes = 3

    def forward(self, x):
        assert x.shape == (1, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
        p = torch.zeros(1, 2, 8)
        p[0, 0] = torch.tensor([32, 32, 16, 8, 0.9, 0.1, 0.2, 0.8])
        p[0, 1] = torch.tensor([10, 10, 4, 4, 0.05, 0.1, 0.1, 0.1])  # under conf_thres
        return p


def test_hand_set_output_maps_back_to_original_pixels():
    img = np.zeros((100, 200, 3), np.uint8)  # h=100, w=200 -> scale 0.32, 16 px pad top/bottom
    det = detect_image(HandSet(), img, 64, conf_thres=0.25)
    assert det.shape == (1, 6)
    # letterboxed xyxy (24, 28, 40, 36) -> ((24-0)/.32, (28-16)/.32, (40-0)/.32, (36-16)/.32)
    np.testing.assert_allclose(det[0], [75, 37.5, 125, 62.5, 0.72, 2], atol=1e-4)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(str(out), 3, 2, 96, seed=1)
    return out


def test_run_detect_writes_images_and_detections(shapes, tmp_path, capsys):
    valid = sorted((shapes / "images" / "valid").glob("*.jpg"))
    lst = tmp_path / "list.txt"
    lst.write_text(f"{valid[0]}\n{tmp_path / 'missing.jpg'}\n{valid[1]}\n")
    model = tiny_model()
    model.train()
    r = run_detect(model, str(lst), str(tmp_path / "out"), img_size=64, conf_thres=0.2,
                   names=["circle", "square", "triangle", "star", "cross"], progress=False)
    assert model.training  # mode restored
    assert r["n_images"] == 2 and r["n_missing"] == 1
    assert "cannot read image" in capsys.readouterr().err
    for v in valid[:2]:
        drawn = cv2.imread(str(tmp_path / "out" / v.name))
        assert drawn.shape == (96, 96, 3)
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    lines = (tmp_path / "out" / "detections.txt").read_text().splitlines()
    n = sum(len(rec["detections"]) for rec in records)
    assert n == r["n_detections"] == len(lines) and n > 0  # a random head scores ~0.25
    for rec in records:
        for d in rec["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 96 and d["score"] > 0.2
    # same model, same image: the same detections as detect_image on it
    model.eval()
    det = detect_image(model, cv2.imread(str(valid[0])), 64, conf_thres=0.2)
    assert len(det) == len(records[0]["detections"])
    np.testing.assert_allclose(det[:, :4], [d["box"] for d in records[0]["detections"]], atol=0.01)


def test_sources(shapes, tmp_path):
    assert len(list_sources(str(shapes / "images" / "train"))) == 3
    one = str(shapes / "images" / "train" / "000000.jpg")
    assert list_sources(one) == [one]
    with pytest.raises(YoloSlimError, match="no images"):
        list_sources(str(tmp_path))
    with pytest.raises(YoloSlimError, match="not found"):
        list_sources(str(tmp_path / "nope.jpg"))


def test_detect_cli(shapes, tmp_path, run_script):
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model(), str(ckpt))
    out = tmp_path / "det"
    args = ["--weights", ckpt, "--source", shapes / "images" / "valid", "--img-size", "64",
            "--conf-thres", "0.2", "--names", shapes / "shapes.names", "--device", "cpu",
            "--output-dir", out]
    rc, stdout, err = run_script("detect.py", *args)
    assert rc == 0, err
    assert "detections in 2 images" in stdout
    assert sorted(os.listdir(out)) == ["000000.jpg", "000001.jpg", "args.json", "detections.json",
                                   "detections.txt"]
    names = {line.split()[2] for line in (out / "detections.txt").read_text().splitlines()}
    assert names <= {"circle", "square", "triangle", "star", "cross"}
    rc, _, err = run_script("detect.py", *args[:3], tmp_path / "missing_dir", *args[4:])
    assert rc == 2 and err.startswith("error: source not found")
