"""IoU, NMS and mAP on hand-made boxes whose answers are worked out in the comments (issue 28:
the NMS test's greedy reference calls the library's own box_iou; these numbers do not).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_slim.deploy.nms import reference_nms
from yolo_slim.eval.evaluate import box_iou, compute_map, nms_indices, non_max_suppression

# xyxy boxes
A = [0, 0, 10, 10]
B = [5, 0, 15, 10]     # A ∩ B = 5x10 = 50, union 150: IoU 1/3
C = [0, 0, 10, 8]      # A ∩ C = 80, union 100: 0.8;  B ∩ C = 5x8 = 40, union 140: 2/7
FAR = [30, 30, 40, 40]  # disjoint: 0
EDGE = [10, 0, 20, 10]  # touches A along x = 10: intersection 0


def test_box_iou_by_hand():
    got = box_iou(torch.tensor([A, B], dtype=torch.float64),
                  torch.tensor([A, B, C, FAR, EDGE], dtype=torch.float64))
    want = torch.tensor([[1, 1 / 3, 0.8, 0, 0],
                         [1 / 3, 1, 2 / 7, 0, 1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# D is A again but of class 1; scores: D .95, A .9, C .85, B .8
NMS_BOXES = torch.tensor([A, B, C, A], dtype=torch.float32)
NMS_SCORES = torch.tensor([0.9, 0.8, 0.85, 0.95])
NMS_CLASSES = torch.tensor([0, 0, 0, 1])


@pytest.mark.parametrize("thr,want", [
    (0.5, [3, 0, 1]),     # D (other class) and A kept; C (0.8 with A) gone; B (1/3) stays
    (0.3, [3, 0]),        # B's 1/3 > 0.3 now: gone too
    (0.85, [3, 0, 2, 1]),  # 0.8 <= 0.85: nothing suppressed
])
def test_nms_by_hand(thr, want):
    for block in (512, 2):
        assert nms_indices(NMS_BOXES, NMS_SCORES, NMS_CLASSES, thr, block=block).tolist() == want
    # ONNX semantics (export --nms's reference): per class, then score
    sel = reference_nms(NMS_BOXES[None], torch.stack([NMS_SCORES * (NMS_CLASSES == c) for c in (0, 1)])[None],
                        100, thr, 0.0)
    assert sorted(sel[:, 2].tolist()) == sorted(want)


def test_a_suppressed_box_suppresses_nothing():
    """E1 .9, E2 .8, E3 .7 in a row 4 px apart: IoU(E1, E2) = IoU(E2, E3) = 60/140 = 0.43,
    IoU(E1, E3) = 20/180 = 0.11. At 0.4 greedy NMS drops E2 (by E1) and keeps E3: E2, already
    suppressed, cannot suppress it."""
    boxes = torch.tensor([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], dtype=torch.float32)
    scores, classes = torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long)
    for block in (512, 1, 2):
        assert nms_indices(boxes, scores, classes, 0.4, block=block).tolist() == [0, 2]
    assert reference_nms(boxes[None], scores[None, None], 100, 0.4, 0.0)[:, 2].tolist() == [0, 2]
    # through non_max_suppression: centre/size in, xyxy + score + class out
    p = torch.tensor([[[5, 5, 10, 10, 0.9, 1.0], [9, 5, 10, 10, 0.8, 1.0], [13, 5, 10, 10, 0.7, 1.0]]])
    out = non_max_suppression(p, conf_thres=0.1, iou_thres=0.4)[0]
    torch.testing.assert_close(out, torch.tensor([[0, 0, 10, 10, 0.9, 0], [8, 0, 18, 10, 0.7, 0]]))


def test_ap_by_hand_at_every_iou_threshold():
    """3 ground truths, 3 detections of one class, sorted by score:
      d1 .9 = g1 (IoU 1): TP at every threshold;
      d2 .8 on g2 with IoU 78/100 = 0.78: TP at .50-.75 (6 thresholds), FP at .80-.95 (4);
      d3 .7 far from everything: FP.
    t <= .75: TP TP FP -> recall 1/3, 2/3, 2/3, precision 1, 1, 2/3: the envelope is 1 up to
      recall 2/3, nothing beyond: recall points 0.00..0.66 = 67 of 101 -> AP 67/101.
    t >= .80: TP FP FP -> precision 1 up to recall 1/3: points 0.00..0.33 = 34 -> AP 34/101.
    mAP@.5:.95 = (6·67 + 4·34) / 10 / 101. At IoU .5 the max-F1 point keeps d1, d2 (P 1,
    R 2/3, F1 0.8; all three: F1 2/3; d1 alone: 0.5), i.e. a confidence in (0.7, 0.8]."""
    gts = [np.array([[0, 0, 0, 10, 10], [0, 20, 0, 30, 10], [0, 40, 0, 50, 10]], float)]
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [20, 0, 30, 7.8, 0.8, 0], [60, 0, 70, 10, 0.7, 0]], float)]
    m = compute_map(dets, gts, nc=1)
    assert m["map50"] == pytest.approx(67 / 101, abs=1e-12)
    assert m["map"] == pytest.approx((6 * 67 + 4 * 34) / 10 / 101, abs=1e-12)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(2 / 3)
    assert 0.7 < m["conf_thres_f1"] <= 0.8
    # two classes: the mean is over classes with ground truth, each AP computed on its own
    gts2 = [np.concatenate([gts[0], [[1, 100, 100, 110, 110]]])]
    dets2 = [np.concatenate([dets[0], [[100, 100, 110, 110, 0.1, 1]]])]
    m2 = compute_map(dets2, gts2, nc=2)
    assert m2["map50"] == pytest.approx((67 / 101 + 1.0) / 2, abs=1e-12)
