"""NMS against a plain greedy reference, mAP against pycocotools, evaluate() on fake loaders."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from yolo_slim.eval.evaluate import (box_iou, compute_map, evaluate, format_metrics, match_image,
                                    nms_indices, non_max_suppression)

from cfgs import ANCHORS_10, conv_section, tiny_detector_cfg


def reference_nms(boxes, scores, classes, thr):
    """Textbook greedy NMS, one box at a time."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # stable on ties
    keep = []
    for i in order:
        if all(classes[i] != classes[k] or box_iou(boxes[i:i + 1], boxes[k:k + 1]).item() <= thr
               for k in keep):
            keep.append(i)
    return keep


def random_boxes(g, n, clusters=12, size=640.0):
    centres = torch.rand(clusters, 2, generator=g) * size
    c = centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 8
    wh = 20 + torch.rand(n, 2, generator=g) * 60
    return torch.cat([c - wh / 2, c + wh / 2], 1)


@pytest.mark.parametrize("seed,block,max_keep", [(0, 512, None), (1, 17, None), (2, 5, 40)])
def test_nms_matches_greedy_reference(seed, block, max_keep):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(g, 300)
    scores = torch.rand(300, generator=g)
    classes = torch.randint(3, (300,), generator=g)
    ref = reference_nms(boxes, scores, classes, 0.45)
    got = nms_indices(boxes, scores, classes, 0.45, max_keep=max_keep, block=block).tolist()
    assert got == (ref[:max_keep] if max_keep else ref)
    assert 20 < len(ref) < 250  # the case really exercises suppression


def test_non_max_suppression_format_and_scores():
    # two overlapping boxes of class 1 and one far box scoring for both classes
    p = torch.zeros(1, 4, 7)
    p[0, 0] = torch.tensor([50, 50, 20, 20, 0.9, 0.1, 1.0])
    p[0, 1] = torch.tensor([52, 50, 20, 20, 0.8, 0.0, 1.0])   # IoU 18/22 = 0.818 with box 0
    p[0, 2] = torch.tensor([200, 100, 40, 10, 0.5, 0.6, 0.8])
    p[0, 3] = torch.tensor([300, 300, 10, 10, 0.0005, 1, 1])  # below conf_thres
    single = non_max_suppression(p, conf_thres=0.25, iou_thres=0.6)[0]
    expected = torch.tensor([[40, 40, 60, 60, 0.9, 1], [180, 95, 220, 105, 0.4, 1]])
    assert torch.allclose(single, expected, atol=1e-6)
    multi = non_max_suppression(p, conf_thres=0.25, iou_thres=0.6, multi_label=True)[0]
    assert multi[:, 4].tolist() == pytest.approx([0.9, 0.4, 0.3])
    assert multi[:, 5].tolist() == [1, 1, 0]
    assert len(non_max_suppression(p, conf_thres=0.25, iou_thres=0.9)[0]) == 3  # 0.818 < 0.9
    assert len(non_max_suppression(p, 0.25, 0.6, max_det=1)[0]) == 1


def _random_case(seed, n_img=10, nc=4, empty_class=3):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n_img):
        m = rng.integers(0, 7)
        cls = rng.integers(0, nc - 1, m)  # class empty_class never has ground truth
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.uniform(10, 120, (m, 2))
        g = np.concatenate([cls[:, None], xy, xy + wh], 1)
        d = []
        for row in g:  # jittered true positives, sometimes with the wrong class or missing
            if rng.uniform() < 0.15:
                continue
            c = row[0] if rng.uniform() < 0.85 else rng.integers(0, nc)
            jit = rng.normal(0, rng.uniform(0, 0.15), 4) * np.r_[wh.mean(), wh.mean(), wh.mean(), wh.mean()]
            d.append([*(row[1:] + jit), rng.uniform(0.05, 1), c])
        for _ in range(rng.integers(0, 6)):  # false positives, some of the empty class
            xy0 = rng.uniform(0, 400, 2)
            d.append([*xy0, *(xy0 + rng.uniform(10, 100, 2)), rng.uniform(0, 0.8), rng.integers(0, nc)])
        d = np.array(d, float).reshape(-1, 6)
        d[:, 2:4] = np.maximum(d[:, 2:4], d[:, 0:2] + 1)
        gts.append(g)
        dets.append(d)
    return gts, dets


def _pycocotools_stats(gts, dets, nc):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images = [{"id": i + 1} for i in range(len(gts))]
    anns = []
    for i, g in enumerate(gts):
        for c, x1, y1, x2, y2 in g:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0})
    res = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(s)} for i, d in enumerate(dets) for x1, y1, x2, y2, s, c in d]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c + 1} for c in range(nc)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_pycocotools(seed):
    gts, dets = _random_case(seed)
    stats = _pycocotools_stats(gts, dets, nc=4)
    m = compute_map(dets, gts, nc=4)
    assert 0.1 < m["map"] < 0.95  # a non-degenerate case
    assert abs(m["map"] - stats[0]) < 1e-3
    assert abs(m["map50"] - stats[1]) < 1e-3
    assert m["per_class"][3]["ap"] is None and m["per_class"][3]["n_labels"] == 0


def test_ap_101_point_hand_case():
    gts = [np.array([[0, 0, 0, 10, 10], [0, 50, 50, 60, 60]], float)]
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [100, 100, 110, 110, 0.8, 0]], float)]
    m = compute_map(dets, gts, nc=1)
    # recall 0.5 at precision 1: recall thresholds 0.00..0.50 = 51 of 101 points
    assert m["map50"] == pytest.approx(51 / 101, abs=1e-12)
    assert m["map"] == pytest.approx(51 / 101, abs=1e-12)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(0.5)


def test_one_ground_truth_matched_by_two_detections_counts_once():
    """Image 1: one GT, two detections on it (scores .9 and .8, both IoU 1); image 2: one GT, one
    detection (.7). COCO matching: the .9 detection takes the GT, the .8 one finds it matched
    and is a false positive at every IoU threshold. Sorted by score: TP, FP, TP -> recall .5, .5,
    1 and precision 1, .5, 2/3; the envelope is 1 up to recall .5 (51 of the 101 recall points,
    0.00..0.50) and 2/3 after (50 points): AP = (51 + 50 x 2/3) / 101 = 0.83498... If the
    duplicate were a TP too, precision would stay 1 and AP would be 1."""
    gts = [np.array([[0, 0, 0, 10, 10]], float), np.array([[0, 20, 20, 30, 30]], float)]
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]], float),
            np.array([[20, 20, 30, 30, 0.7, 0]], float)]
    assert match_image(dets[0], gts[0]).tolist() == [[True] * 10, [False] * 10]
    m = compute_map(dets, gts, nc=1)
    ap = (51 + 50 * 2 / 3) / 101
    assert m["map50"] == pytest.approx(ap, abs=1e-12) and m["map"] == pytest.approx(ap, abs=1e-12)
    # max-F1 point: all three detections, P = 2/3, R = 1
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(1.0)
    assert m["per_class"][0]["n_dets"] == 3 and m["n_labels"] == 2


def test_class_conventions_no_gt_and_no_dets():
    gts = [np.array([[0, 0, 0, 10, 10], [1, 20, 20, 40, 40]], float)]
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [60, 60, 70, 70, 0.7, 2]], float)]
    m = compute_map(dets, gts, nc=3, names=["a", "b", "c"])
    a, b, c = m["per_class"]
    assert a["ap"] == 1.0 and a["ap50"] == 1.0        # detections of class 2 do not hurt a
    assert b["ap"] == 0.0 and b["n_dets"] == 0         # ground truth, no detection: AP 0
    assert c["ap"] is None and c["n_labels"] == 0      # no ground truth: no AP, left out
    assert m["map"] == 0.5 and m["n_labels"] == 2
    table = format_metrics(m)
    assert table.splitlines()[1].split()[:3] == ["all", "1", "2"]
    assert table.splitlines()[4].split() == ["c", "0", "0", "-", "-", "-", "-"]
    # a class with neither labels nor detections is left out of the table, and counted
    m4 = compute_map(dets, gts, nc=4, names=["a", "b", "c", "d"])
    lines = format_metrics(m4).splitlines()
    assert len(lines) == 6 and not any(x.split()[0] == "d" for x in lines[1:-1])
    assert lines[-1].endswith("; 1 classes with no labels and no detections not shown)")


class FakeModel(torch.nn.Module):
    """Returns, batch after batch, the decoded predictions it was given."""

    def __init__(self, preds, nc):
        super().__init__()
        self.preds, self.k, self.num_classes = preds, 0, nc

    def forward(self, x):
        assert not self.training
        p = self.preds[self.k]
        self.k += 1
        return p


def _fake_loader_and_preds(shift=0.0, nc=3, hw=(64, 96), seed=0):
    g = torch.Generator().manual_seed(seed)
    batches, preds = [], []
    for b in range(3):
        n = 5
        img = torch.randint(2, (n,), generator=g)
        cls = torch.randint(nc, (n,), generator=g).float()
        cxcy = 0.3 + torch.rand(n, 2, generator=g) * 0.4
        wh = 0.1 + torch.rand(n, 2, generator=g) * 0.2
        targets = torch.cat([img[:, None].float(), cls[:, None], cxcy, wh], 1)
        batches.append((torch.zeros(2, 3, *hw), targets, ("a.jpg", "b.jpg"), (None, None)))
        pred = torch.zeros(2, 8, 5 + nc)  # rows past the objects: objectness 0
        for i in range(2):
            t = targets[targets[:, 0] == i]
            px = t[:, 2:6] * torch.tensor([hw[1], hw[0], hw[1], hw[0]])
            px[:, 0] += shift * px[:, 2]
            pred[i, :len(t), :4] = px
            pred[i, :len(t), 4] = 1.0
            pred[i, torch.arange(len(t)), 5 + t[:, 1].long()] = 0.9
        preds.append(pred)
    return batches, preds


def test_evaluate_perfect_and_shifted_predictor():
    batches, preds = _fake_loader_and_preds()
    model = FakeModel(preds, 3)
    model.train()
    m = evaluate(model, batches, progress=False, names=["x", "y", "z"])
    assert model.training  # mode restored
    assert m["map"] == 1.0 and m["map50"] == 1.0
    assert m["n_images"] == 6 and m["n_labels"] == 15
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert [c["name"] for c in m["per_class"]] == ["x", "y", "z"]
    # shift x by 10% of the width: IoU = 0.9 / 1.1 = 0.818, a TP at .50..80, a FP at .85..95
    batches, preds = _fake_loader_and_preds(shift=0.1)
    m = evaluate(FakeModel(preds, 3), batches, progress=False)
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(0.7, abs=1e-9)


TINY_CFG = tiny_detector_cfg(conv_section(8, 3, 4), anchors=ANCHORS_10, head_stride=2, head_pad=None)


def test_evaluate_cli_on_generated_set(tmp_path, run_script):
    import json

    from yolo_slim.darknet.cfg import parse_cfg_text
    from yolo_slim.nn.model import Darknet
    from yolo_slim.data.synthetic import make_shapes_dataset
    from yolo_slim.nn.weights import save_checkpoint
    data = make_shapes_dataset(str(tmp_path / "shapes"), 2, 6, 64, seed=0)
    n_labels = sum(len((tmp_path / "shapes/labels/valid" / f"{i:06d}.txt").read_text().splitlines())
                   for i in range(6))
    torch.manual_seed(0)
    save_checkpoint(Darknet(parse_cfg_text(TINY_CFG, "tiny.cfg")), str(tmp_path / "tiny.pt"))
    args = ["--weights", tmp_path / "tiny.pt", "--data", data, "--img-size", "64",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--output-dir", tmp_path / "ev"]
    rc, stdout, err = run_script("evaluate.py", *args)
    assert rc == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_images"] == 6 and m["n_labels"] == n_labels
    assert [c["name"] for c in m["per_class"]] == ["circle", "square", "triangle", "star", "cross"]
    assert 0 <= m["map"] <= m["map50"] < 0.2  # an untrained model
    assert "circle" in stdout and "mAP50" in stdout
    rc, _, err = run_script("evaluate.py", *args[:3], tmp_path / "nope.data", *args[4:])
    assert rc == 2 and err.startswith("error: data file not found")
