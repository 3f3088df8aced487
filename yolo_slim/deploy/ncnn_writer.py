"""ncnn .param/.bin text and bytes for a Darknet model, written from its built modules (no
pnnx, no ONNX in between), FP32 weights with BN folded into the convs.

The registry (yolo_slim/sections) has already resolved every cfg key into the torch module of a
layer, so the writers below read those modules (kernel, strides, darknet's maxpool padding,
route slices, shortcut sources) and are keyed by module class, like the forward loop: no switch
on section names. A layer with no writer is refused with one line naming its section.

The graph: input blob ``images`` [C, H, W] (ncnn runs one image at a time), one output blob
per [yolo] head, ``raw0``, ``raw1``, ...: the map that reaches the head, [na*(5+nc), ny, nx]
(ncnn has no 5-D tensor for the head's reshape and decode; the caller decodes). Facts checked
against ncnn (tests/test_ncnn.py): Pooling ``pad_mode=1`` pads exactly the pads written, with
-FLT_MAX for max pooling, as darknet's [maxpool] (size-1 split (size-1)//2 before, the rest
after); the default mode 0 adds a tail until the last window fits, so a 2/2 maxpool of a 12×12
map gives 7×7 there, 6×6 in darknet. ``Reorg mode=1`` is darknet's [reorg3d] channel order.
A blob read by two layers goes through a ``Split`` (without one, ncnn crashed here).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.deploy.export import fuse_conv_bn
from yolo_slim.nn.model import Darknet
from yolo_slim.sections import infer_shapes
from yolo_slim.sections.avgpool import GlobalAvgPool
from yolo_slim.sections.base import Shapes
from yolo_slim.sections.convolutional import ConvBlock
from yolo_slim.sections.dropout import Dropout
from yolo_slim.sections.maxpool import MaxPool
from yolo_slim.sections.reorg3d import Reorg3d
from yolo_slim.sections.route import Route
from yolo_slim.sections.sam import Product
from yolo_slim.sections.shortcut import Shortcut
from yolo_slim.sections.upsample import Upsample
from yolo_slim.sections.yolo import YOLOLayer

MAGIC = 7767517
FP32_TAG = struct.pack("<I", 0)  # the storage flag before a weight blob: 0 = float32
INPUT = "images"
# fused into Convolution: activation_type, activation_params (ncnn's fused_activation.h)
FUSED = {"linear": (0, []), "relu": (1, []), "leaky": (2, [0.1]), "logistic": (4, []),
         "mish": (5, [])}
# as a layer of its own (after a shortcut or product, and the activations a conv cannot fuse)
ACT_LAYERS = {"relu": ("ReLU", {}), "leaky": ("ReLU", {0: 0.1}), "logistic": ("Sigmoid", {}),
              "mish": ("Mish", {}), "swish": ("Swish", {}), "tanh": ("TanH", {})}


def _value(v: Any) -> str:
    if isinstance(v, float):
        # 9 significant digits round-trip a float32; ncnn reads at most 15 characters a value
        # and 9 digits after the point into an unsigned int: 8 after the point fit both
        return f"{v:.8e}"
    return str(int(v))


def param_items(params: dict[int, Any]) -> str:
    """`k=v` pairs in id order; arrays as `-233xx=n,a,b,...` (ncnn's array key = -23300 - id)."""
    out = []
    for k in sorted(params):
        v = params[k]
        if isinstance(v, (list, tuple)):
            out.append(f"{-23300 - k}={len(v)}" + "".join(f",{_value(e)}" for e in v))
        else:
            out.append(f"{k}={_value(v)}")
    return " ".join(out)


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Any] = field(default_factory=dict)


class NcnnGraph:
    """Layers in file order and the weight bytes in the same order."""

    def __init__(self, c: int, h: int, w: int, input_name: str = INPUT):
        self.layers = [Layer("Input", input_name, [], [input_name], {0: w, 1: h, 2: c})]
        self.weights: list[bytes] = []
        self.names = {input_name}

    def add(self, kind: str, inputs: list[str], params: dict[int, Any], hint: str,
            weights: tuple[bytes, ...] = ()) -> str:
        """Append a one-output layer; its layer and blob are both named `hint` (made unique)."""
        name, k = hint, 0
        while name in self.names:
            k += 1
            name = f"{hint}_{k}"
        self.names.add(name)
        self.layers.append(Layer(kind, name, list(inputs), [name], dict(params)))
        self.weights.extend(weights)
        return name

    def rename_blob(self, old: str, new: str) -> None:
        for lay in self.layers:
            lay.inputs = [new if b == old else b for b in lay.inputs]
            lay.outputs = [new if b == old else b for b in lay.outputs]

    def _with_splits(self) -> list[Layer]:
        """The layers with a Split after every blob that more than one layer reads."""
        readers: dict[str, int] = {}
        for lay in self.layers:
            for b in lay.inputs:
                readers[b] = readers.get(b, 0) + 1
        out, used = [], {b: 0 for b in readers}
        for lay in self.layers:
            lay = Layer(lay.type, lay.name, list(lay.inputs), lay.outputs, lay.params)
            for k, b in enumerate(lay.inputs):
                if readers[b] > 1:
                    lay.inputs[k] = f"{b}_split{used[b]}"
                    used[b] += 1
            out.append(lay)
            for b in lay.outputs:
                if readers.get(b, 0) > 1:
                    out.append(Layer("Split", f"{b}_split", [b],
                                     [f"{b}_split{k}" for k in range(readers[b])]))
        return out

    def param_text(self) -> str:
        layers = self._with_splits()
        blobs = {b for lay in layers for b in lay.outputs}
        lines = [str(MAGIC), f"{len(layers)} {len(blobs)}"]
        for lay in layers:
            head = f"{lay.type} {lay.name} {len(lay.inputs)} {len(lay.outputs)} " \
                   + " ".join(lay.inputs + lay.outputs)
            items = param_items(lay.params)
            lines.append(f"{head} {items}".rstrip())
        return "\n".join(lines) + "\n"

    def bin_bytes(self) -> bytes:
        return b"".join(self.weights)


def activation_layer(g: NcnnGraph, bottom: str, act: str, hint: str) -> str:
    if act == "linear":
        return bottom
    if act not in ACT_LAYERS:
        raise YoloSlimError(f"activation={act} has no ncnn layer in this writer")
    kind, params = ACT_LAYERS[act]
    return g.add(kind, [bottom], params, hint)


def conv_layer(g: NcnnGraph, bottom: str, weight: np.ndarray, bias: np.ndarray,
               stride: tuple[int, int], pad: int, dilation: int, groups: int, act: str,
               hint: str) -> str:
    """Convolution (ConvolutionDepthWise with groups) + bias + activation, fused where ncnn
    can. weight [O, I/groups, kh, kw] flattened as it is: ncnn's [kw, kh, in, out(, group)]
    with w fastest is the same order."""
    o, _, kh, kw = weight.shape
    sy, sx = stride
    p: dict[int, Any] = {0: o, 1: kw, 2: dilation, 3: sx, 4: pad, 5: 1, 6: int(weight.size)}
    if kh != kw:
        p[11] = kh
    if sy != sx:
        p[13] = sy
    if groups > 1:
        p[7] = groups
    fused = FUSED.get(act)
    if fused and fused[0]:
        p[9] = fused[0]
        if fused[1]:
            p[10] = [float(v) for v in fused[1]]
    kind = "ConvolutionDepthWise" if groups > 1 else "Convolution"
    top = g.add(kind, [bottom], p, hint, (FP32_TAG + weight.astype("<f4").tobytes(),
                                          bias.astype("<f4").tobytes()))
    return top if fused else activation_layer(g, top, act, hint + "_act")


def conv_arrays(m: ConvBlock) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of a BN-folded conv block, float32 (the floats the .bin holds)."""
    w = m.conv.weight.detach().float().numpy()
    b = m.conv.bias
    return w, (b.detach().float().numpy() if b is not None else np.zeros(w.shape[0], np.float32))


@dataclass
class Ctx:
    x: str                                          # the blob forward() calls x
    outs: list[str] = field(default_factory=list)   # blob of every layer's output
    heads: list[str] = field(default_factory=list)  # blob reaching each [yolo]
    shapes: Shapes | None = None


def _crop(g: NcnnGraph, b: str, start: int, end: int, hint: str) -> str:
    return g.add("Crop", [b], {9: [start], 10: [end], 11: [0]}, hint)  # axis 0: channels


def _sum(g: NcnnGraph, terms: list[str], hint: str) -> str:
    return terms[0] if len(terms) == 1 else g.add("Eltwise", terms, {0: 1}, hint)


def _conv(g: NcnnGraph, m: ConvBlock, i: int, c: Ctx) -> str:
    w, b = conv_arrays(m)
    cv = m.conv
    return conv_layer(g, c.x, w, b, cv.stride, cv.padding[0], cv.dilation[0], cv.groups,
                      m.activation, f"l{i}")


def _maxpool(g: NcnnGraph, m: MaxPool, i: int, c: Ctx) -> str:
    lo_x, hi_x, lo_y, hi_y = m.pad
    sy, sx = m.stride
    return g.add("Pooling", [c.x], {0: 0, 1: m.size, 2: sx, 12: sy, 3: lo_x, 14: hi_x, 13: lo_y,
                                    15: hi_y, 5: 1}, f"l{i}")


def _upsample(g: NcnnGraph, m: Upsample, i: int, c: Ctx) -> str:
    s = float(m.stride)
    top = g.add("Interp", [c.x], {0: 1, 1: s, 2: s}, f"l{i}")  # 1: nearest
    if m.scale != 1.0:
        top = g.add("BinaryOp", [top], {0: 2, 1: 1, 2: float(m.scale)}, f"l{i}_scale")
    return top


def _route(g: NcnnGraph, m: Route, i: int, c: Ctx) -> str:
    parts = []
    for j in m.layers:
        b = c.outs[j]
        if m.groups > 1:
            n = c.shapes.of(j)[0] // m.groups
            b = _crop(g, b, m.group_id * n, (m.group_id + 1) * n, f"l{i}_slice")
        parts.append(b)
    return parts[0] if len(parts) == 1 else g.add("Concat", parts, {0: 0}, f"l{i}")


def _shortcut(g: NcnnGraph, m: Shortcut, i: int, c: Ctx) -> str:
    """Sum of x and the sources; darknet adds a narrower source into the first channels and
    a wider one with its first C channels (sections/shortcut.py)."""
    cx, terms = c.shapes.prev(i)[0], [c.x]
    for j in m.sources:
        s, cs = c.outs[j], c.shapes.of(j)[0]
        if cs > cx:
            s, cs = _crop(g, s, 0, cx, f"l{i}_src"), cx
        if cs == cx:
            terms.append(s)
            continue
        acc = _sum(g, terms, f"l{i}_sum")
        added = g.add("Eltwise", [_crop(g, acc, 0, cs, f"l{i}_head"), s], {0: 1}, f"l{i}_part")
        terms = [g.add("Concat", [added, _crop(g, acc, cs, cx, f"l{i}_tail")], {0: 0}, f"l{i}_cat")]
    return activation_layer(g, _sum(g, terms, f"l{i}"), m.activation, f"l{i}_act")


def _product(g: NcnnGraph, m: Product, i: int, c: Ctx) -> str:
    # [sam]: equal shapes; [scale_channels]: x is C×1×1, broadcast per channel by BinaryOp
    top = g.add("BinaryOp", [c.outs[m.source], c.x], {0: 2}, f"l{i}")
    return activation_layer(g, top, m.activation, f"l{i}_act")


def _reorg(g: NcnnGraph, m: Reorg3d, i: int, c: Ctx) -> str:
    return g.add("Reorg", [c.x], {0: m.stride, 1: 1}, f"l{i}")


def _avgpool(g: NcnnGraph, m: GlobalAvgPool, i: int, c: Ctx) -> str:
    # global pooling gives a 1-D blob of C; reshape back to C×1×1 for the convs that follow
    top = g.add("Pooling", [c.x], {0: 1, 4: 1}, f"l{i}_pool")
    return g.add("Reshape", [top], {0: 1, 1: 1, 2: -1}, f"l{i}")


def _dropout(g: NcnnGraph, m: Dropout, i: int, c: Ctx) -> str:
    return c.x  # identity at inference


def _yolo(g: NcnnGraph, m: YOLOLayer, i: int, c: Ctx) -> str:
    c.heads.append(c.x)
    return c.x  # a head passes its input on (Darknet.forward_raw)


WRITERS: dict[type, Callable[[NcnnGraph, Any, int, Ctx], str]] = {
    ConvBlock: _conv, MaxPool: _maxpool, Upsample: _upsample, Route: _route, Shortcut: _shortcut,
    Product: _product, Reorg3d: _reorg, GlobalAvgPool: _avgpool, Dropout: _dropout, YOLOLayer: _yolo}


@torch.no_grad()
def write_model(model: Darknet, img_hw: tuple[int, int]) -> NcnnGraph:
    """The ncnn graph of `model` (BN folded into a copy) at input `img_hw`; outputs raw0..."""
    fused = fuse_conv_bn(model)
    shapes = infer_shapes(fused.module_defs, img_hw)
    g = NcnnGraph(shapes.input[0], *img_hw)
    c = Ctx(INPUT, shapes=shapes)
    for i, m in enumerate(fused.module_list):
        writer = WRITERS.get(type(m))
        if writer is None:
            d = fused.module_defs[i + 1]
            raise YoloSlimError(f"[{d['type']}] (layer {i}) has no ncnn writer: export it as ONNX")
        c.x = writer(g, m, i, c)
        c.outs.append(c.x)
    for k, b in enumerate(c.heads):
        if b == INPUT or b.startswith("raw"):
            raise YoloSlimError(f"[yolo] {k} reads the input or another head's map: not writable "
                                "as an ncnn output")
        g.rename_blob(b, f"raw{k}")
    return g
