"""What the project knows about one darknet [section] type, in one place.

Each section type is a `Section` subclass in its own module, registered by `@register`. It owns:

- `shape`: the output (channels, height, width) from the earlier shapes, as darknet computes it,
  raising a CfgError (file:line) for a cfg that parses but cannot run;
- `build`: the torch module (every module's forward is `forward(x, outputs)`);
- `channels`: the channel rule of the channel graph (which producer channels the output carries,
  which channels are tied, which must stay);
- `propagate`: how the constant a cut channel (or a removed block) leaves behind travels through
  it, for β folding and block removal alike (see `Carry`);
- `flops`: its cost in the project's FLOPs convention (analysis/cost.py);
- `ref_keys`: the keys that hold layer indices (for readers, forward and renumbering).

Adding a section type is one new file here plus its import in `__init__.py`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from yolo_slim.darknet.cfg import get_float, get_ints, get_str
from yolo_slim.core.errors import CfgError
from yolo_slim.sections.activations import ACTIVATIONS, activation_fn

Shape = tuple[int, int, int]  # (channels, height, width)


def fail(d: dict[str, Any], msg: str) -> CfgError:
    """A CfgError naming the section, its file and line."""
    return CfgError(f"[{d['type']}] {msg}", d.get("_path"), d.get("_line"))


def require_default(d: dict[str, Any], key: str, default: float, why: str = "") -> None:
    """A key whose non-default value we do not implement is an error, never ignored."""
    if key in d and get_float(d, key) != default:
        raise fail(d, f"{key}={d[key]} is not supported{why}")


def activation_of(d: dict[str, Any], default: str) -> str:
    name = get_str(d, "activation", default)
    if name not in ACTIVATIONS:
        raise fail(d, f"activation '{name}' is not supported (supported: {', '.join(ACTIVATIONS)})")
    return name


def resolve_index(d: dict[str, Any], i: int, ref: int, key: str) -> int:
    """Darknet layer reference: negative = relative to layer i, else absolute."""
    j = i + ref if ref < 0 else ref
    if not 0 <= j < i:
        raise fail(d, f"{key}={d[key]} points to layer {j}, outside layers 0..{i - 1}")
    return j


class Shapes:
    """Output shapes of the layers built so far; index -1 is the network input."""

    def __init__(self, input_shape: Shape, defs: list[dict[str, Any]]):
        self.input, self.defs = input_shape, defs
        self.layers: list[Shape] = []

    def of(self, j: int) -> Shape:
        return self.layers[j] if j >= 0 else self.input

    def prev(self, i: int) -> Shape:
        return self.of(i - 1)


@dataclass
class Carry:
    """What folding knows about one layer's output, per channel.

    `dead[c]`: in the *masked* model (cut channels' γ zeroed, removed blocks' last γ zeroed)
    channel c is the constant `off[c]`; the folded model's value there does not matter, because
    every consumer conv has zero weights on it and compaction drops it.
    Live channels: the folded model's output is the masked model's minus `off[c]` (an offset a
    removed block left on the identity path; 0 in channel pruning). A conv absorbs both kinds
    into its running_mean (BN) or bias. Offsets are float64 so folding adds no rounding."""
    off: torch.Tensor    # float64 [C]
    dead: np.ndarray     # bool [C]

    @staticmethod
    def zeros(c: int) -> "Carry":
        return Carry(torch.zeros(c, dtype=torch.float64), np.zeros(c, bool))

    def select(self, idx: np.ndarray) -> "Carry":
        return Carry(self.off[torch.from_numpy(np.asarray(idx, np.int64))], self.dead[idx])


class FoldError(AssertionError):
    """A live offset reached a section that cannot carry it: the caller's analysis (channel
    graph ties, removable-block conditions) should have excluded this cut."""


class Section:
    """Base: the defaults of a section that reads the previous layer and has no weights."""
    type: ClassVar[str] = ""
    ref_keys: ClassVar[tuple[str, ...]] = ()  # keys holding layer indices
    reads_previous: ClassVar[bool] = True     # [route] reads only its `layers=`
    is_head: ClassVar[bool] = False           # [yolo]: forward's outputs, not the next input
    absorbs_offset: ClassVar[bool] = False    # [convolutional]: folds constants into BN/bias
    has_weights: ClassVar[bool] = False       # [convolutional]: parameters, FLOPs, .weights floats
    join: ClassVar[str | None] = None         # element-wise join of its inputs: "sum" or "product"

    # ---- references ----------------------------------------------------------------------------
    def refs(self, d: dict[str, Any], i: int) -> list[int]:
        """Absolute indices of the layers named by this section's reference keys."""
        return [resolve_index(d, i, r, k) for k in self.ref_keys if k in d for r in get_ints(d, k)]

    def inputs(self, d: dict[str, Any], i: int) -> list[int]:
        """Every layer whose output this one reads (-1: the network input)."""
        return ([i - 1] if self.reads_previous else []) + self.refs(d, i)

    def renumber(self, d: dict[str, Any], i: int, new_i: int, where) -> dict[str, Any]:
        """Copy of the section with its references pointing at the same tensors after layers
        were removed (`where`: old index -> new index). Relative references stay relative,
        absolute stay absolute; unchanged text is kept as written."""
        d = copy.deepcopy(d)
        for key in self.ref_keys:
            if key not in d:
                continue
            raw = get_ints(d, key)
            new = [where(resolve_index(d, i, r, key)) - new_i if r < 0 else
                   where(resolve_index(d, i, r, key)) for r in raw]
            if new != raw:
                d[key] = ",".join(map(str, new))
        return d

    # ---- shape and build -----------------------------------------------------------------------
    def shape(self, d: dict[str, Any], i: int, shapes: Shapes) -> Shape:
        return shapes.prev(i)

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> nn.Module:
        raise NotImplementedError

    # ---- channel graph -------------------------------------------------------------------------
    def channels(self, d: dict[str, Any], i: int, gb) -> np.ndarray:
        """Node ids of the output channels (default: the input's channels pass through)."""
        return gb.in_nodes(i)

    # ---- constant propagation ------------------------------------------------------------------
    def propagate(self, d: dict[str, Any], i: int, m: nn.Module, fc) -> Carry:
        """Default: a per-channel map that is linear in its input (x + c -> f(x) + c)."""
        return fc.carry(i - 1)

    def passes_offset(self, d: dict[str, Any]) -> str | None:
        """None when a constant offset on a live input channel comes out as a constant offset
        (so a removed block's constant may travel through); else why it cannot."""
        return None

    # ---- cost ----------------------------------------------------------------------------------
    def flops(self, d: dict[str, Any], i: int, shapes: Shapes, c_in: int, c_out: int) -> int:
        """FLOPs at these channel counts; only convs count (cost.py's convention)."""
        return 0

    def compact(self, old: nn.Module, new: nn.Module, keep_in: np.ndarray,
                keep_out: np.ndarray) -> None:
        """Copy the kept part of `old`'s parameters into `new` (sections with weights)."""



# the registry lives here, below every section module, so that a section module registering
# itself does not import the package that imports it (sections/__init__ re-exports both)
SECTIONS: dict[str, Section] = {}


def register(cls: type[Section]) -> type[Section]:
    """Class decorator: the section type's one instance goes into SECTIONS under cls.type."""
    SECTIONS[cls.type] = cls()
    return cls


def nonlinear_join(fc, i: int, parts: list[Carry], combine, act: str, where: str) -> Carry:
    """Carry of an element-wise non-linear join (a product, or a sum with an activation):
    a channel is dead when every joined channel is dead (the graph ties them, so in channel
    pruning they are cut together) and then holds act(combine(constants)); a live channel
    must carry no offset, because act(f(x + c)) is not f(x) shifted by a constant."""
    dead = np.logical_and.reduce([p.dead for p in parts])
    live = torch.from_numpy(~dead)
    if any(bool((p.off[live] != 0).any()) for p in parts):
        raise FoldError(f"a constant offset reaches layer {i} ({where}) on a live channel")
    off = torch.zeros_like(parts[0].off)
    const = activation_fn(act)(combine([p.off for p in parts]))
    off[~live] = const[~live]
    return Carry(off, dead)


class SectionModule(nn.Module):
    """Base of every built module: `reads` are the layer outputs forward() needs from
    `outputs` besides x (the previous layer's output)."""
    reads: list[int] = []

    def forward(self, x: torch.Tensor, outputs: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        raise NotImplementedError
