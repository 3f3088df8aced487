"""Tiny darknet cfgs and comparison helpers shared by the tests (`from cfgs import ...`).

Sections are built from their values, so a test states what its network *is* (8 filters, stride
2, one head of 5 classes) instead of repeating 30 lines of cfg text. Key order inside a section
does not matter to darknet or to yolo_slim.darknet.cfg; a key given as None is left out (darknet's
default applies), e.g. `pad=None` on a 1x1 head conv.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import torch

ANCHORS_8 = ((8, 8), (16, 16), (32, 32))
ANCHORS_10 = ((10, 10), (20, 20), (40, 40))


def net_section(size: int = 64, channels: int | None = None) -> str:
    return f"[net]\nwidth={size}\nheight={size}\n" + (f"channels={channels}\n" if channels else "")


def conv_section(filters: int, size: int = 3, stride: int = 1, bn: bool = True,
                 act: str = "leaky", pad: int | None = 1) -> str:
    keys = (["batch_normalize=1"] if bn else []) + [f"filters={filters}", f"size={size}",
                                                     f"stride={stride}"]
    keys += [f"pad={pad}"] if pad is not None else []
    return "[convolutional]\n" + "\n".join(keys + [f"activation={act}"]) + "\n"


def shortcut_section(frm: int = -3, act: str = "linear") -> str:
    return f"[shortcut]\nfrom={frm}\nactivation={act}\n"


def maxpool_section(size: int, stride: int) -> str:
    return f"[maxpool]\nsize={size}\nstride={stride}\n"


def route_section(*layers: int) -> str:
    return f"[route]\nlayers={','.join(map(str, layers))}\n"


def yolo_section(mask: Sequence[int], anchors: Sequence[tuple[int, int]], classes: int,
                 num: int | None = None) -> str:
    text = (f"[yolo]\nmask={','.join(map(str, mask))}\n"
            f"anchors={', '.join(f'{w},{h}' for w, h in anchors)}\nclasses={classes}\n")
    return text + (f"num={num}\n" if num is not None else "")


def head_sections(nc: int, anchors: Sequence[tuple[int, int]], mask: Sequence[int] | None = None,
                  stride: int = 1, pad: int | None = 1) -> str:
    """The 1x1 linear conv with len(mask) * (5 + nc) filters, then its [yolo] (all anchors when
    no mask is given)."""
    mask = list(range(len(anchors))) if mask is None else mask
    return (conv_section(len(mask) * (5 + nc), 1, stride, bn=False, act="linear", pad=pad)
            + yolo_section(mask, anchors, nc, len(anchors)))


def tiny_detector_cfg(*body: str, nc: int = 5, anchors: Sequence[tuple[int, int]] = ANCHORS_8,
                      size: int = 64, channels: int | None = None, head_stride: int = 1,
                      head_pad: int | None = 1) -> str:
    """[net] + the body sections + one head on the last layer."""
    return "".join([net_section(size, channels), *body,
                    head_sections(nc, anchors, stride=head_stride, pad=head_pad)])


# a 64 px detector with one residual block (8 -> 16 -> [1x1 8, 3x3 16, shortcut] -> 16 -> head)
TINY_RESIDUAL = tiny_detector_cfg(conv_section(8, 3, 2), conv_section(16, 3, 2),
                                  conv_section(8, 1, 1), conv_section(16, 3, 1), shortcut_section(-3),
                                  conv_section(16, 3, 2))


# ---- comparing models -------------------------------------------------------------------------

def raw(m, x: torch.Tensor) -> list[torch.Tensor]:
    """Raw head maps of `m` in eval mode, without autograd."""
    with torch.no_grad():
        return m.eval().forward_raw(x)


def max_abs(a, b) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


def tol(ref) -> float:
    """Float-rounding tolerance for outputs of size |ref|: 1e-5 relative + 1e-6."""
    return 1e-5 * max(float(r.abs().max()) for r in ref) + 1e-6


def read_output_dir(out: Path, extra: Iterable[str], stem: str = "net"):
    """Independent reader of a pruning output dir: exactly one .cfg and one .weights (`stem`),
    the `extra` files beside them, a .weights header 0,2,5 + int64 seen, then exactly the floats
    the cfg needs. Returns the model loaded from the files (eval mode)."""
    from yolo_slim.darknet.cfg import parse_cfg
    from yolo_slim.nn.model import Darknet, conv_layers
    from yolo_slim.nn.weights import load_darknet_weights
    files = sorted(os.listdir(out))
    assert [f for f in files if f.endswith((".cfg", ".weights"))] == [f"{stem}.cfg", f"{stem}.weights"]
    assert set(extra) <= set(files)
    back = Darknet(parse_cfg(str(out / f"{stem}.cfg"))).eval()
    data = (out / f"{stem}.weights").read_bytes()
    assert struct.unpack("<iiiq", data[:20]) == (0, 2, 5, 0)
    need = sum(p.numel() for _, c in conv_layers(back) for p in
               ([c.bn.bias, c.bn.weight, c.bn.running_mean, c.bn.running_var] if c.bn is not None
                else [c.conv.bias]) + [c.conv.weight])
    assert len(data) == 20 + 4 * need
    load_darknet_weights(back, str(out / f"{stem}.weights"))
    return back
