"""Box decode at heads whose x and y strides differ, against darknet's formulas written out here
(issue 28): the model's eval output and the exported ONNX file's `detections`.

A 96x64 (w x h) input; head 0 sits behind a stride_x=2 stride_y=1 conv (map 24 x 32: x stride
4 px, y stride 2 px), head 1 behind a stride_x=1 stride_y=2 conv (map 48 x 16: x stride 2,
y stride 4) with new_coords=1. darknet (docs darknet-format.md, get_yolo_box):
  x = (col + σ(tx)·s − (s−1)/2) / lw · W,   y = (row + σ(ty)·s − (s−1)/2) / lh · H,
  w = anchor_w · e^tw,   h = anchor_h · e^th,   obj, cls = σ(·)
and with new_coords=1 the conv already applied the logistic: tx, ty used as they are,
w = tw²·4·anchor_w, obj and cls as they are. Rows are ordered (head, anchor, row, col).
A swapped x/y stride or grid leaves the export's own check (torch vs onnxruntime, one decode)
green; these numbers do not.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet

from netgen import randomize_bn

H, W = 64, 96
ANCHORS = ((10, 14), (23, 27), (37, 58))
CFG = f"""[net]
width={W}
height={H}
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=3
stride_x=2
stride_y=1
pad=1
activation=leaky
[convolutional]
filters=14
size=1
activation=linear
[yolo]
mask=0,1
anchors=10,14, 23,27, 37,58
classes=2
num=3
scale_x_y=1.2
[route]
layers=0
[convolutional]
batch_normalize=1
filters=8
size=3
stride_x=1
stride_y=2
pad=1
activation=leaky
[convolutional]
filters=7
size=1
activation=logistic
[yolo]
mask=2
anchors=10,14, 23,27, 37,58
classes=2
num=3
scale_x_y=2.0
new_coords=1
"""
HEAD_CONVS = (2, 6)                       # the conv before each [yolo]
MAPS = ((32, 24), (16, 48))               # (lh, lw) of each head
MASKS = ((0, 1), (2,))
SCALE = (1.2, 2.0)
NEW_COORDS = (False, True)
NC, NO = 2, 7


def sig(v):
    return 1 / (1 + np.exp(-v))


def model(seed: int = 0) -> Darknet:
    torch.manual_seed(seed)
    m = Darknet(parse_cfg_text(CFG, "xy.cfg")).eval()
    randomize_bn(m, seed)
    return m


def head_maps(m: Darknet, x: torch.Tensor) -> list[np.ndarray]:
    """The head convs' outputs [B, C, lh, lw] as torch's conv computed them (a forward hook:
    nothing of the [yolo] layer's reshape or decode)."""
    got: dict[int, np.ndarray] = {}
    hooks = [m.module_list[i].register_forward_hook(
        lambda mod, inp, out, i=i: got.__setitem__(i, out.detach().double().numpy()))
        for i in HEAD_CONVS]
    with torch.no_grad():
        m.forward_raw(x)
    for h in hooks:
        h.remove()
    return [got[i] for i in HEAD_CONVS]


def hand_decode(maps: list[np.ndarray]) -> np.ndarray:
    """darknet's get_yolo_box, cell by cell, anchor by anchor."""
    rows = []
    for t, (lh, lw), mask, s, nc1 in zip(maps, MAPS, MASKS, SCALE, NEW_COORDS):
        assert t.shape[2:] == (lh, lw)
        B = t.shape[0]
        for a, m_ in enumerate(mask):
            aw, ah = ANCHORS[m_]
            e = t[:, a * NO:(a + 1) * NO]  # [B, 7, lh, lw]
            col = np.arange(lw)[None, None, :]
            row = np.arange(lh)[None, :, None]
            if nc1:
                tx, ty, conf = e[:, 0], e[:, 1], e[:, 4:]
                bw, bh = e[:, 2] ** 2 * 4 * aw, e[:, 3] ** 2 * 4 * ah
            else:
                tx, ty, conf = sig(e[:, 0]), sig(e[:, 1]), sig(e[:, 4:])
                bw, bh = np.exp(e[:, 2]) * aw, np.exp(e[:, 3]) * ah
            bx = (col + tx * s - (s - 1) / 2) / lw * W
            by = (row + ty * s - (s - 1) / 2) / lh * H
            box = np.concatenate([np.stack([bx, by, bw, bh], 1), conf], 1)  # [B, 7, lh, lw]
            rows.append(box.transpose(0, 2, 3, 1).reshape(B, lh * lw, NO))
    return np.concatenate(rows, 1)


def literal_model() -> Darknet:
    """Head convs with zero weights and hand-set biases: every cell of a head gets the same
    raw values, so one cell's box is a handful of numbers."""
    m = model()
    with torch.no_grad():
        c0, c1 = m.module_list[2].conv, m.module_list[6].conv
        c0.weight.zero_()
        c1.weight.zero_()
        # head 0, anchor 0: all 0; anchor 1: tx 0, ty 0, tw ln 2, th 0, obj 0, cls ln 3, -ln 3
        c0.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 0,
                                    0, 0, math.log(2), 0, 0, math.log(3), -math.log(3)]))
        c1.bias.zero_()  # logistic(0) = 0.5 everywhere
    return m


# (row index in the detections, the box by hand)
LITERAL = [
    # head 0, anchor 1 (23 x 27), row 5, col 7: index 1·32·24 + 5·24 + 7 = 895
    # x = (7 + 0.5·1.2 − 0.1) / 24 · 96 = 30, y = (5 + 0.5) / 32 · 64 = 11, w = 2·23, h = 27
    (895, [30.0, 11.0, 46.0, 27.0, 0.5, 0.75, 0.25]),
    # head 0, anchor 0 (10 x 14), row 31, col 23 (last cell): index 31·24 + 23 = 767
    (767, [94.0, 63.0, 10.0, 14.0, 0.5, 0.5, 0.5]),
    # head 1 (mask 2: 37 x 58), row 3, col 10: index 2·32·24 + 3·48 + 10 = 1690
    # x = (10 + 0.5·2 − 0.5) / 48 · 96 = 21, y = (3 + 0.5) / 16 · 64 = 14, w = 0.25·4·37
    (1690, [21.0, 14.0, 37.0, 58.0, 0.5, 0.5, 0.5]),
]
N_ROWS = 2 * 32 * 24 + 16 * 48


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from yolo_slim.deploy.export import export_onnx
    d = tmp_path_factory.mktemp("xy")
    paths = {}
    for name, m in (("literal", literal_model()), ("random", model())):
        paths[name] = str(d / f"{name}.onnx")
        export_onnx(m, paths[name], img_size=(H, W))
    return paths


def ort(path: str, x: torch.Tensor) -> np.ndarray:
    from yolo_slim.deploy.runtime import ort_session
    return ort_session(path).run(None, {"images": x.numpy()})[0]


def test_head_strides_differ_in_x_and_y():
    m = model()
    maps = head_maps(m, torch.zeros(1, 3, H, W))
    assert [mp.shape[2:] for mp in maps] == [MAPS[0], MAPS[1]]
    # x stride 96/24 = 4 vs y stride 64/32 = 2; then 96/48 = 2 vs 64/16 = 4
    assert [(W / lw, H / lh) for lh, lw in MAPS] == [(4.0, 2.0), (2.0, 4.0)]


def test_literal_boxes_in_torch_and_onnx(exported):
    m = literal_model()
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        det = m(x).numpy()
    onnx_det = ort(exported["literal"], x)
    assert det.shape == onnx_det.shape == (1, N_ROWS, NO)
    for k, want in LITERAL:
        np.testing.assert_allclose(det[0, k], want, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(onnx_det[0, k], want, rtol=1e-6, atol=1e-5)


def test_every_box_matches_darknets_formulas_in_torch_and_onnx(exported):
    m = model()
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(4))
    want = hand_decode(head_maps(m, x))
    assert want.shape == (2, N_ROWS, NO)
    with torch.no_grad():
        det = m(x).double().numpy()
    onnx_det = ort(exported["random"], x).astype(np.float64)
    tol = 1e-4 * np.maximum(1.0, np.abs(want))  # boxes are in pixels
    assert (np.abs(det - want) <= tol).all(), float(np.abs(det - want).max())
    assert (np.abs(onnx_det - want) <= tol).all(), float(np.abs(onnx_det - want).max())
    # the case is not degenerate: x spans the width, y the height, at each head
    assert want[..., 0].max() > 0.9 * W and want[..., 1].max() > 0.9 * H
