"""An independent numpy forward of a darknet cfg + .weights, written from darknet-format.md and
sharing no code with yolo_slim (own cfg parser, own weights reader, own layers). Tests compare
the ONNX export run in onnxruntime against it, so the export's output layout is checked against
darknet's semantics rather than against our own model code.

Supports [convolutional] (stride_x/y, pad/padding, groups, dilation, BN, activations),
[maxpool] (-inf padding), [upsample], [route] (groups/group_id), [shortcut] (from list,
darknet's prefix-channel add) and [yolo] (scale_x_y, new_coords). Output: [B, N, 5+nc] in the
ONNX contract layout (yolo layer, anchor, row, column; x y w h in input pixels).
"""
from __future__ import annotations

import numpy as np


def parse_cfg(text: str) -> list[dict[str, str]]:
    """darknet read_cfg: all whitespace removed, '#'/';' lines skipped, first key wins."""
    sections: list[dict[str, str]] = []
    for raw in text.split("\n"):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            sections.append({"type": line[1:-1]})
        elif "=" in line:
            k, v = line.split("=", 1)
            sections[-1].setdefault(k, v)
    return sections


def _i(d, k, default):
    return int(float(d[k])) if k in d else default


def _f(d, k, default):
    return float(d[k]) if k in d else default


def _ints(d, k):
    return [int(v) for v in d[k].split(",") if v]


def read_weights(path: str) -> np.ndarray:
    """Body floats of a .weights file (20-byte header when major*10+minor >= 2, else 16)."""
    data = open(path, "rb").read()
    major, minor = np.frombuffer(data, "<i4", 2)
    return np.frombuffer(data, "<f4", offset=20 if major * 10 + minor >= 2 else 16)


def _softplus(x):
    # darknet's softplus thresholds at +-20
    return np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log1p(np.exp(np.minimum(x, 20)))))


ACT = {
    "linear": lambda x: x,
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "relu": lambda x: np.maximum(x, 0),
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "swish": lambda x: x / (1 + np.exp(-x)),
}


def conv2d(x, w, sy, sx, pad, dil, groups):
    """x [B,C,H,W], w [F,C/g,k,k]; zero padding `pad*dil`, darknet's im2col conv."""
    B, C, H, W = x.shape
    F, cg, k, _ = w.shape
    p = pad * dil
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh = (H + 2 * p - dil * (k - 1) - 1) // sy + 1
    ow = (W + 2 * p - dil * (k - 1) - 1) // sx + 1
    out = np.empty((B, F, oh, ow), np.float64)
    fg = F // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        cols = np.stack([xs[:, :, ky * dil: ky * dil + sy * (oh - 1) + 1: sy,
                            kx * dil: kx * dil + sx * (ow - 1) + 1: sx]
                         for ky in range(k) for kx in range(k)], 2)  # [B, cg, k*k, oh, ow]
        wg = w[g * fg:(g + 1) * fg].reshape(fg, cg, k * k)
        out[:, g * fg:(g + 1) * fg] = np.einsum("bckhw,fck->bfhw", cols, wg)
    return out


def maxpool(x, size, sy, sx, padding):
    lo = padding // 2
    xp = np.pad(x, ((0, 0), (0, 0), (lo, padding - lo), (lo, padding - lo)),
                constant_values=-np.inf)
    H, W = x.shape[2:]
    oh, ow = (H + padding - size) // sy + 1, (W + padding - size) // sx + 1
    return np.max(np.stack([xp[:, :, ky: ky + sy * (oh - 1) + 1: sy, kx: kx + sx * (ow - 1) + 1: sx]
                            for ky in range(size) for kx in range(size)], 0), 0)


def forward(cfg_text: str, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Run the cfg on x [B, C, H, W] (float) and return decoded boxes [B, N, 5+nc]."""
    secs = parse_cfg(cfg_text)
    x = x.astype(np.float64)
    H, W = x.shape[2:]
    outs: list[np.ndarray] = []
    dets = []
    pos = 0

    def take(n):
        nonlocal pos
        v = weights[pos:pos + n].astype(np.float64)
        assert v.size == n, "weights file too short"
        pos += n
        return v

    for i, d in enumerate(secs[1:]):
        t = d["type"]
        prev = outs[-1] if outs else x
        ref = lambda r: i + r if r < 0 else r  # noqa: E731
        if t in ("convolutional", "conv"):
            f, k = _i(d, "filters", 1), _i(d, "size", 1)
            s = _i(d, "stride", 1)
            sx, sy = _i(d, "stride_x", -1), _i(d, "stride_y", -1)
            if sx < 1 or sy < 1:
                sx = sy = s
            pad = k // 2 if _i(d, "pad", 0) else _i(d, "padding", 0)
            groups, dil = max(1, _i(d, "groups", 1)), (_i(d, "dilation", 1) if k > 1 else 1)
            bn = _i(d, "batch_normalize", 0)
            bias = take(f)
            if bn:
                gamma, mean, var = take(f), take(f), take(f)
            w = take(f * (prev.shape[1] // groups) * k * k).reshape(f, -1, k, k)
            y = conv2d(prev, w, sy, sx, pad, dil, groups)
            if bn:
                y = (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * gamma[:, None, None]
            y = ACT[d.get("activation", "logistic")](y + bias[:, None, None])
        elif t in ("maxpool", "max"):
            s = _i(d, "stride", 1)
            size = _i(d, "size", s)
            y = maxpool(prev, size, _i(d, "stride_y", s), _i(d, "stride_x", s),
                        _i(d, "padding", size - 1))
        elif t == "upsample":
            s = _i(d, "stride", 2)
            y = prev.repeat(s, 2).repeat(s, 3) * _f(d, "scale", 1.0)
        elif t == "route":
            g, gid = _i(d, "groups", 1), _i(d, "group_id", 0)
            parts = []
            for r in _ints(d, "layers"):
                src = outs[ref(r)]
                c = src.shape[1] // g
                parts.append(src[:, gid * c:(gid + 1) * c])
            y = np.concatenate(parts, 1)
        elif t == "shortcut":
            y = prev.copy()
            for r in _ints(d, "from"):
                src = outs[ref(r)]
                c = min(src.shape[1], y.shape[1])  # darknet adds the common channel prefix
                y[:, :c] += src[:, :c]
            y = ACT[d.get("activation", "linear")](y)
        elif t == "yolo":
            y = prev
            nc, num = _i(d, "classes", 20), _i(d, "num", 1)
            mask = _ints(d, "mask") if "mask" in d else list(range(num))
            anchors = [float(v) for v in d["anchors"].split(",") if v] if "anchors" in d else [0.5] * 2 * num
            s, new = _f(d, "scale_x_y", 1.0), _i(d, "new_coords", 0)
            B, _, lh, lw = y.shape
            sig = ACT["logistic"]
            rows, cols = np.meshgrid(np.arange(lh), np.arange(lw), indexing="ij")
            for a, m in enumerate(mask):  # darknet entry layout: channel a*(5+nc)+k
                e = y[:, a * (5 + nc):(a + 1) * (5 + nc)]
                tx, ty = (e[:, 0], e[:, 1]) if new else (sig(e[:, 0]), sig(e[:, 1]))
                tx, ty = tx * s - 0.5 * (s - 1), ty * s - 0.5 * (s - 1)
                if new:
                    bw, bh = e[:, 2] ** 2 * 4 * anchors[2 * m], e[:, 3] ** 2 * 4 * anchors[2 * m + 1]
                    conf = e[:, 4:]
                else:
                    bw, bh = np.exp(e[:, 2]) * anchors[2 * m], np.exp(e[:, 3]) * anchors[2 * m + 1]
                    conf = sig(e[:, 4:])
                bx, by = (cols + tx) / lw * W, (rows + ty) / lh * H
                box = np.concatenate([np.stack([bx, by, bw, bh], 1), conf], 1)  # [B, 5+nc, lh, lw]
                dets.append(box.reshape(B, 5 + nc, -1).transpose(0, 2, 1))
        else:
            raise ValueError(f"darknet_ref: layer type [{t}] not implemented")
        outs.append(y)
    assert pos == weights.size, f"weights file has {weights.size - pos} extra floats"
    return np.concatenate(dets, 1)
