"""Darknet builder numerics against independent references: maxpool padding, route slices,
shortcut, activations, YOLO decoding by hand, a whole small network against a functional
re-implementation, and the refusals (unsupported activation, key value or reference)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yolo_slim.darknet.cfg import CfgError, parse_cfg_text
from yolo_slim.sections.yolo import YOLOLayer
from yolo_slim.nn.model import Darknet, conv_layers
from yolo_slim.sections import section_of
from yolo_slim.sections.base import Shapes


def build_layer(section: str, prev_channels: list[int], in_channels: int = 3):
    """Build the single section `section` as layer len(prev_channels) after layers with the
    given output channels (their modules are not needed by the builder)."""
    fillers = "".join("[maxpool]\nsize=1\n" for _ in prev_channels)
    defs = parse_cfg_text(f"[net]\nchannels={in_channels}\n{fillers}{section}", "t.cfg")
    i = len(prev_channels)
    shapes = Shapes((in_channels, 16, 16), defs)
    shapes.layers = [(c, 16, 16) for c in prev_channels]
    sec = section_of(defs[i + 1])
    shapes.layers.append(sec.shape(defs[i + 1], i, shapes))
    return sec.build(defs[i + 1], i, shapes), shapes.layers[-1][0]


def darknet_maxpool_ref(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """darknet maxpool_layer.c: out = (h + padding - size)/stride + 1, window starts at
    -padding/2, positions outside the image are skipped (i.e. -inf)."""
    c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.full((c, oh, ow), -np.inf, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            for dy in range(size):
                for dx in range(size):
                    y, xx = off + i * stride + dy, off + j * stride + dx
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, y, xx])
    return out


@pytest.mark.parametrize("size, stride, hw, out_hw", [
    (2, 1, (5, 4), (5, 4)),     # yolov3-tiny: keeps the size, pads right/bottom with -inf
    (2, 2, (5, 5), (3, 3)),     # odd input: ceil
    (5, 1, (6, 7), (6, 7)),     # SPP
    (9, 1, (6, 7), (6, 7)),
    (13, 1, (6, 7), (6, 7)),
    (3, 2, (7, 6), (4, 3)),
])
def test_maxpool_matches_darknet_reference(size, stride, hw, out_hw):
    m, c = build_layer(f"[maxpool]\nsize={size}\nstride={stride}\n", [2])
    assert c == 2
    g = torch.Generator().manual_seed(size * 10 + stride)
    x = torch.randn(1, 2, *hw, generator=g) - 5.0  # all negative: zero padding would show
    y = m(x)
    ref = darknet_maxpool_ref(x[0].numpy(), size, stride, size - 1)
    assert tuple(y.shape[-2:]) == out_hw == ref.shape[-2:]
    assert torch.equal(y[0], torch.from_numpy(ref))


def test_maxpool_2_1_hand_case():
    m, _ = build_layer("[maxpool]\nsize=2\nstride=1\n", [1])
    x = -torch.tensor([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]]).view(1, 1, 3, 3)
    want = -torch.tensor([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]])  # max of a down-right
    # window of negatives is its top-left element; the -inf border never wins
    assert torch.equal(m(x)[0, 0], want)


def test_route_groups_slice_and_concat_order():
    o0 = torch.arange(4.).view(1, 4, 1, 1)
    o1 = torch.arange(10., 16.).view(1, 6, 1, 1)
    m, c = build_layer("[route]\nlayers=-2,-1\ngroups=2\ngroup_id=1\n", [4, 6])
    assert c == 2 + 3
    assert torch.equal(m(None, [o0, o1]).flatten(), torch.tensor([2., 3., 13., 14., 15.]))
    m, c = build_layer("[route]\nlayers=-1,0\n", [4, 6])  # relative and absolute, in order
    assert c == 10 and m.layers == [1, 0]
    assert torch.equal(m(None, [o0, o1]).flatten(), torch.cat([o1, o0], 1).flatten())
    m, c = build_layer("[route]\nlayers=-2\ngroups=2\n", [4, 6])  # group_id defaults to 0
    assert c == 2 and torch.equal(m(None, [o0, o1]).flatten(), torch.tensor([0., 1.]))
    with pytest.raises(CfgError, match="groups=4 does not divide"):
        build_layer("[route]\nlayers=-1\ngroups=4\n", [4, 6])


def test_shortcut_adds_then_applies_activation():
    g = torch.Generator().manual_seed(1)
    o = [torch.randn(1, 3, 2, 2, generator=g) for _ in range(3)]
    m, c = build_layer("[shortcut]\nfrom=-3\nactivation=leaky\n", [3, 3, 3])
    assert c == 3 and m.sources == [0]
    s = o[2] + o[0]
    assert torch.allclose(m(o[2], o), torch.where(s > 0, s, 0.1 * s), atol=0, rtol=1e-6)
    m, _ = build_layer("[shortcut]\nfrom=-2,0\n", [3, 3, 3])  # multi-from, linear default
    assert torch.allclose(m(o[2], o), o[2] + o[1] + o[0], atol=1e-6)


ACTS = {
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "linear": lambda x: x,
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0),
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    None: lambda x: 1 / (1 + np.exp(-x)),  # darknet's default activation is logistic
}


@pytest.mark.parametrize("act", list(ACTS))
def test_conv_activation_matches_formula(act):
    line = f"activation={act}\n" if act else ""
    m, c = build_layer(f"[convolutional]\nfilters=3\nsize=1\n{line}", [], in_channels=3)
    with torch.no_grad():
        m.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        m.conv.bias.zero_()
    x = torch.linspace(-6, 6, 3 * 4 * 5).view(1, 3, 4, 5)
    ref = ACTS[act](x.double().numpy())
    assert np.abs(m(x).detach().double().numpy() - ref).max() < 1e-5


def test_conv_geometry_keys():
    x = torch.randn(1, 4, 8, 8)
    m, _ = build_layer("[convolutional]\nfilters=2\nsize=3\nstride_x=2\npad=1\n", [], 4)
    assert m(x).shape == (1, 2, 8, 4)  # stride_y falls back to stride=1 on its own
    m, _ = build_layer("[convolutional]\nfilters=2\nsize=3\n", [], 4)  # padding 0
    assert m(x).shape == (1, 2, 6, 6) and m.bn is None and m.conv.bias is not None
    m, _ = build_layer("[convolutional]\nfilters=6\nsize=3\npadding=2\nstride=2\n"
                       "groups=2\nbatch_normalize=1\n", [], 4)
    assert m.conv.weight.shape == (6, 2, 3, 3) and m.conv.bias is None and m.bn is not None
    assert m(x).shape == (1, 6, 5, 5)  # (8 + 4 - 3)//2 + 1
    m, _ = build_layer("[convolutional]\nfilters=2\nsize=3\npad=1\ndilation=2\n", [], 4)
    assert m(x).shape == (1, 2, 8, 8) and m.conv.dilation == (2, 2)


# ---- YOLO decoding ---------------------------------------------------------------------------

def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


@pytest.mark.parametrize("new_coords", [0, 1])
def test_yolo_decode_by_hand_non_square(new_coords):
    anchors = [(10.0, 14.0), (23.0, 27.0)]
    head = YOLOLayer(anchors, nc=2, scale_x_y=1.1, new_coords=bool(new_coords))
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(1, 2, 2, 3, 7, generator=g)
    if new_coords:
        raw = raw.sigmoid()  # the conv before such a head uses activation=logistic
    img_hw = (64, 96)  # map 2x3 -> stride 32 on both axes, from the map, not from [net]
    out = head.decode(raw, img_hw)
    assert out.shape == (1, 12, 7)
    s = 1.1
    for a in range(2):
        for r in range(2):
            for c in range(3):
                t = raw[0, a, r, c].tolist()
                n = a * 6 + r * 3 + c  # anchor, then row, then column
                if new_coords:
                    bx, by = t[0] * s - 0.05, t[1] * s - 0.05
                    w, h = t[2] ** 2 * 4 * anchors[a][0], t[3] ** 2 * 4 * anchors[a][1]
                    conf = t[4:]
                else:
                    bx, by = sig(t[0]) * s - 0.05, sig(t[1]) * s - 0.05
                    w, h = math.exp(t[2]) * anchors[a][0], math.exp(t[3]) * anchors[a][1]
                    conf = [sig(v) for v in t[4:]]
                want = [(bx + c) * 96 / 3, (by + r) * 64 / 2, w, h, *conf]
                assert out[0, n].tolist() == pytest.approx(want, rel=1e-5, abs=1e-5)


HEADS_CFG = """[net]
width=416
height=416
channels=3
[maxpool]
size=2
stride=2
[convolutional]
filters={f1}
size=1
activation=linear
[yolo]
mask=0,1
anchors=10,14, 23,27, 37,58
classes={nc}
num=3
[route]
layers=-3
[maxpool]
size=2
stride=2
[convolutional]
filters={f2}
size=1
activation=linear
[yolo]
mask=2
anchors=10,14, 23,27, 37,58
classes={nc}
num=3
"""


def heads_model(nc: int) -> Darknet:
    text = HEADS_CFG.format(f1=2 * (5 + nc), f2=5 + nc, nc=nc)
    model = Darknet(parse_cfg_text(text, "h.cfg"))
    g = torch.Generator().manual_seed(nc)
    with torch.no_grad():
        for _, m in conv_layers(model):
            m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g))
            m.conv.bias.copy_(torch.randn(m.conv.bias.shape, generator=g))
    return model


def test_train_raw_maps_and_eval_order_two_heads():
    model = heads_model(nc=3)
    x = torch.rand(2, 3, 8, 12)  # not the [net] size; the strides come from the maps
    model.train()
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 2, 4, 6, 8), (2, 1, 2, 3, 8)]
    # raw[h][b, a, y, x, k] is channel a*(5+nc)+k of the conv feeding head h
    conv_out = model.module_list[1](model.module_list[0](x))
    assert torch.equal(raw[0][1, 1, 2, 3], conv_out[1, 8:16, 2, 3])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2 * 4 * 6 + 1 * 2 * 3, 8)
    first = model.heads[0].decode(raw[0], (8, 12))
    second = model.heads[1].decode(raw[1], (8, 12))
    assert torch.equal(out, torch.cat([first, second], 1))  # heads in cfg order
    # head 0 has stride 2 on both axes: row 2, col 3 of anchor 1 is entry 1*24 + 2*6 + 3
    t = raw[0][0, 1, 2, 3].tolist()
    n = 1 * 24 + 2 * 6 + 3
    want_x, want_y = (sig(t[0]) + 3) * 2, (sig(t[1]) + 2) * 2
    assert out[0, n, :2].tolist() == pytest.approx([want_x, want_y], rel=1e-6)
    assert out[0, n, 2:4].tolist() == pytest.approx([math.exp(t[2]) * 23, math.exp(t[3]) * 27],
                                                    rel=1e-5)
    # head 1 (stride 4) uses anchor 2 = (37, 58)
    t = raw[1][0, 0, 1, 2].tolist()
    assert out[0, 24 * 2 + 1 * 3 + 2].tolist()[:4] == pytest.approx(
        [(sig(t[0]) + 2) * 4, (sig(t[1]) + 1) * 4, math.exp(t[2]) * 37, math.exp(t[3]) * 58],
        rel=1e-5)


def test_one_class_scores_are_real_sigmoids():
    model = heads_model(nc=1).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        raw = model.forward_raw(x)
        out = model(x)
    assert out.shape == (1, 2 * 16 + 4, 6)
    cls = torch.cat([r[..., 5].reshape(1, -1) for r in raw], 1)
    assert torch.allclose(out[..., 5], cls.sigmoid(), atol=1e-7)
    assert 0.0 < out[..., 5].min() and out[..., 5].max() < 1.0  # never a constant 1.0
    assert not torch.allclose(out[..., 5], torch.ones_like(out[..., 5]))


# ---- a whole small network against a functional re-implementation -------------------------

NET = """[net]
width=32
height=32
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[maxpool]
size=2
stride=1
[route]
layers=-1
groups=2
group_id=1
[convolutional]
batch_normalize=1
filters=8
size=1
activation=mish
[shortcut]
from=-4
activation=leaky
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=swish
[maxpool]
size=5
stride=1
[route]
layers=-1,-2
[convolutional]
filters=14
size=1
activation=linear
[yolo]
mask=2,3
anchors=4,5, 8,9, 12,10, 20,24
classes=2
num=4
scale_x_y=1.2
[route]
layers=-3
[convolutional]
batch_normalize=1
filters=8
size=1
activation=relu
[upsample]
stride=2
[route]
layers=-1,4
[convolutional]
filters=14
size=1
activation=linear
[yolo]
mask=0,1
anchors=4,5, 8,9, 12,10, 20,24
classes=2
num=4
"""


def ref_forward(model: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    """The same network written out by hand with functional ops (eval-mode BN)."""
    ml = model.module_list

    def conv(i, t, stride, pad, act):
        m = ml[i]
        y = F.conv2d(t, m.conv.weight, m.conv.bias, stride=stride, padding=pad)
        if m.bn is not None:
            bn = m.bn
            y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None]
                                                                  + 1e-5)
            y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
        return act(y)

    def pool(t, size):  # stride 1, darknet padding: (size-1)//2 left/top, rest right/bottom
        p = size - 1
        tp = F.pad(t, (p // 2, p - p // 2, p // 2, p - p // 2), value=-math.inf)
        h, w = t.shape[-2:]
        return torch.stack([tp[..., dy:dy + h, dx:dx + w] for dy in range(size)
                            for dx in range(size)]).amax(0)

    def leaky(t):
        return torch.where(t > 0, t, 0.1 * t)

    l0 = conv(0, x, 2, 1, leaky)
    l1 = pool(l0, 2)
    l2 = l1[:, 4:8]
    l3 = conv(3, l2, 1, 0, lambda t: t * torch.tanh(F.softplus(t)))
    l4 = leaky(l3 + l0)
    l5 = conv(5, l4, 2, 1, lambda t: t * torch.sigmoid(t))
    l6 = pool(l5, 5)
    l7 = torch.cat([l6, l5], 1)
    l8 = conv(8, l7, 1, 0, lambda t: t)
    l11 = conv(11, l7, 1, 0, torch.relu)
    l12 = l11.repeat_interleave(2, 2).repeat_interleave(2, 3)
    l13 = torch.cat([l12, l4], 1)
    l14 = conv(14, l13, 1, 0, lambda t: t)
    b = x.shape[0]
    return [l8.view(b, 2, 7, 8, 8).permute(0, 1, 3, 4, 2),
            l14.view(b, 2, 7, 16, 16).permute(0, 1, 3, 4, 2)]


def test_small_network_matches_functional_reference():
    torch.manual_seed(0)
    model = Darknet(parse_cfg_text(NET, "net.cfg"))
    assert model.out_channels == [8, 8, 4, 8, 8, 16, 16, 32, 14, 14, 32, 8, 8, 16, 14, 14]
    assert model.yolo_layers == [9, 15]
    with torch.no_grad():
        for _, m in conv_layers(model):
            if m.bn is not None:
                m.bn.weight.uniform_(0.5, 1.5)
                m.bn.bias.normal_()
                m.bn.running_mean.normal_()
                m.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        raw = model.forward_raw(x)
        ref = ref_forward(model, x)
        out = model(x)
    for r, f in zip(raw, ref):
        assert r.shape == f.shape
        assert (r - f).abs().max().item() < 1e-5
    assert out.shape == (2, 2 * 64 + 2 * 256, 7)
    # scale_x_y=1.2 on the first head: x = (sigmoid*1.2 - 0.1 + col) * 4
    t = ref[0][1, 0, 3, 5]
    assert out[1, 3 * 8 + 5, 0].item() == pytest.approx(
        ((torch.sigmoid(t[0]) * 1.2 - 0.1 + 5) * 4).item(), rel=1e-5)


# ---- refusals --------------------------------------------------------------------------------

BASE = "[net]\nchannels=3\n[convolutional]\nfilters=6\nsize=1\nactivation=leaky\n"
HEAD = ("[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=1,1\nclasses=1\n")


@pytest.mark.parametrize("middle, line, pattern", [
    ("[convolutional]\nfilters=6\nactivation=elu\n", 7, r"activation 'elu' is not supported"),
    ("[convolutional]\nfilters=6\nactivation=leaky#x\n", 7, r"activation 'leaky#x'"),
    ("[convolutional]\nfilters=6\nantialiasing=1\n", 7, r"antialiasing=1 is not supported"),
    ("[convolutional]\nfilters=6\nxnor=1\n", 7, r"xnor=1 is not supported"),
    ("[convolutional]\nfilters=6\ndontloadscales=1\n", 7, r"dontloadscales=1 .*weights layout"),
    ("[convolutional]\nfilters=6\nshare_index=0\n", 7, r"share_index"),
    ("[shortcut]\nfrom=-1\nweights_type=per_feature\nweights_normalization=relu\n", 7,
     r"weighted shortcut"),
    ("[shortcut]\nfrom=-1\nactivation=elu\n", 7, r"activation 'elu'"),
    ("[maxpool]\nsize=2\nmaxpool_depth=1\n", 7, r"maxpool_depth=1 is not supported"),
    ("[upsample]\nstride=-2\n", 7, r"stride=-2"),
    ("[route]\nlayers=1\n", 7, r"layers=1 points to layer 1, outside layers 0\.\.0"),
    ("[route]\nlayers=-2\n", 7, r"points to layer -1"),
    ("[shortcut]\nfrom=-5\n", 7, r"from=-5 points to layer -4"),
    ("[route]\nlayers=-1,\n", 8, r"ends with a comma"),
    ("[convolutional]\nfilters=six\n", 8, r"filters='six' is not an integer"),
    ("[reorg]\nstride=2\n", 7, r"layer type \[reorg\] is not supported"),
])
def test_unsupported_values_raise_cfg_error_with_line(middle, line, pattern):
    with pytest.raises(CfgError) as e:
        Darknet(parse_cfg_text(BASE + middle + HEAD, "u.cfg"))
    msg = str(e.value)
    assert msg.startswith(f"u.cfg:{line}: "), msg
    assert re.search(pattern, msg), msg


def test_structural_refusals():
    with pytest.raises(CfgError, match="no \\[yolo\\] layer"):
        Darknet(parse_cfg_text(BASE))
    with pytest.raises(CfgError, match=r"has 6 channels but len\(mask\)\*\(classes\+5\) = 12"):
        Darknet(parse_cfg_text(BASE + "[yolo]\nmask=0,1\nanchors=1,1,2,2\nclasses=1\n"))
    with pytest.raises(CfgError, match=r"mask=0,3 does not index the 2 anchors"):
        Darknet(parse_cfg_text(BASE + "[yolo]\nmask=0,3\nanchors=1,1,2,2\nclasses=1\n"))
    with pytest.raises(CfgError, match=r"reads layer 2, a \[yolo\] layer"):
        Darknet(parse_cfg_text(BASE + HEAD + "[route]\nlayers=-1\n" + HEAD))
    # a partial-channel add is darknet's (tests/test_sections.py); maps of other sizes are not
    with pytest.raises(CfgError, match=r"adds layer 0 \(\d+x\d+\) to the previous layer's"):
        Darknet(parse_cfg_text(BASE + "[maxpool]\nsize=2\nstride=2\n[shortcut]\nfrom=-2\n" + HEAD))
