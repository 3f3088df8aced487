"""Layer pruning: remove whole residual blocks and fold their constant output into later layers.

A block ends at a [shortcut] s:  x = layer s-3 -> conv1 (s-2) -> conv2 (s-1) -> s = act_s(x + conv2).
Once conv2's BN γ is zero, conv2 outputs the per-channel constant c = act(β₂) everywhere, so a
linear shortcut gives s = x + c: the block is x plus a constant. Three models, named as in channel
pruning:

- *masked*: the original with γ₂ = 0 in every removed block (the branch outputs c);
- *folded*: masked with β₂ = 0 too (the branch outputs act(0) = 0, so s = x bit for bit), and c
  carried forward as an offset: unchanged through [maxpool] (-inf padding) and [route], times
  `scale` through [upsample], summed through linear [shortcut]s (the identity path of the next
  blocks), until a [convolutional] absorbs it (`running_mean -= Σ W·c` with BN, `bias += Σ W·c`
  without, per group for grouped convs);
- *compact*: the folded model with the blocks' three sections dropped and every `layers=` /
  `from=` renumbered so it reads the same tensor as before (a reference to a removed shortcut
  becomes a reference to its block input x, which the folded model showed equal to it).

compact == folded to float rounding (every op is the same; only `x + 0` disappears). compact vs
masked is exact for 1×1 absorbers; a k×k absorber sees zero padding where the masked model saw
c at the borders (the "border gap", reported, never hidden).

A [shortcut] is a removable block when, from the cfg alone:
1. `from=` names one layer, x = s-3, and layers s-2, s-1 are [convolutional];
2. conv2 has batch_normalize (γ ranks the block and zeroes it) and act₂(0) = 0 (not logistic);
3. the shortcut's activation is linear (act_s(x + c) must be x + c);
4. no [route]/[shortcut] reads conv1 or conv2 (they disappear); reading s itself is fine;
5. the offset c, followed forward, meets a conv on every path before any [yolo] or non-linear
   [shortcut] (no conv can absorb it there).
Each condition concerns one block only, so any subset of candidates can go together.
In yolov3, yolov3-spp and yolov4 all 23 [shortcut]s pass (`python -m yolo_slim.prune.layers CFG`
or `prune_layers.py --list` prints the table): each is `from=-3`, linear, after a leaky (v3) or
mish (v4) BN conv; its x is the stage's stride-2 conv, yolov4's CSP split conv (after
`[route] layers=-2`) or the previous shortcut. Routes read shortcuts 36 and 61 in yolov3 (86 and
98) and yolov3-spp (93 and 105): removable, the route is renumbered to x and the offset reaches the
conv after the route. yolov4's CSP routes (`layers=-1,-N`) read the transition conv after the last
block and the split conv, never a block's convs or shortcuts. Every offset meets a conv (the next
block's conv1, the CSP transition 1×1, or the next stage's stride-2 3×3) before any head.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from yolo_slim.core.cli import Parser, parse
from yolo_slim.core.errors import YoloSlimError, cli_main
from yolo_slim.darknet.cfg import get_str, parse_cfg
from yolo_slim.nn.model import Darknet, conv_layers
from yolo_slim.prune.verify import verify
from yolo_slim.sections import check_supported, section_of
from yolo_slim.sections.activations import activation_fn
from yolo_slim.sections.convolutional import has_bn

RANKS = ("mean", "max")


@dataclass(frozen=True)
class Block:
    conv1: int
    conv2: int
    shortcut: int
    source: int  # x, the block input the identity path carries

    @property
    def layers(self) -> tuple[int, int, int]:
        return (self.conv1, self.conv2, self.shortcut)


def _refs(d: dict[str, Any], i: int) -> list[int]:
    return section_of(d).refs(d, i)


def _offset_blocked(defs: list[dict[str, Any]], s: int) -> str | None:
    """Why a constant added at layer s's output cannot be absorbed by convs (None if it can):
    each section says whether an offset passes through it (`passes_offset`) or is absorbed."""
    nz = {s}  # layers whose output carries (part of) the offset
    for i in range(s + 1, len(defs) - 1):
        d = defs[i + 1]
        sec = section_of(d)
        if sec.absorbs_offset:
            continue
        if not any(j in nz for j in sec.inputs(d, i)):
            continue
        reason = sec.passes_offset(d)
        if reason:
            return f"its constant reaches [{d['type']}] {i}: {reason}"
        nz.add(i)
    return None


def analyze_blocks(defs: list[dict[str, Any]]) -> tuple[list[Block], dict[int, str]]:
    """Removable blocks (conditions in the module docstring), and for every other [shortcut]
    the reason it stays."""
    check_supported(defs)
    readers: dict[int, list[int]] = {}
    for i, d in enumerate(defs[1:]):
        for j in _refs(d, i):
            readers.setdefault(j, []).append(i)
    blocks, why = [], {}
    for s, d in enumerate(defs[1:]):
        if section_of(d).join != "sum":  # a residual block ends at an element-wise sum
            continue
        src = _refs(d, s)
        if len(src) != 1 or src[0] != s - 3:
            why[s] = f"from={d.get('from')} is not the single layer s-3"
            continue
        if not (section_of(defs[s - 1]).absorbs_offset and section_of(defs[s]).absorbs_offset):
            why[s] = "the two layers before it are not both [convolutional]"
            continue
        c2 = defs[s]  # layer s-1
        act2 = get_str(c2, "activation", "logistic")
        if not has_bn(c2):
            why[s] = f"conv {s - 1} has no batch_normalize (no γ to rank and zero)"
        elif float(activation_fn(act2)(torch.zeros(1))) != 0.0:
            why[s] = f"conv {s - 1} activation={act2} has act(0) != 0"
        elif get_str(d, "activation", "linear") != "linear":
            why[s] = f"activation={d['activation']}: act(x + c) is not x plus a constant"
        elif readers.get(s - 2) or readers.get(s - 1):
            j = s - 2 if readers.get(s - 2) else s - 1
            why[s] = f"layer {readers[j][0]} reads conv {j} inside the block"
        else:
            reason = _offset_blocked(defs, s)
            if reason:
                why[s] = reason
            else:
                blocks.append(Block(s - 2, s - 1, s, s - 3))
    return blocks, why


def block_scores(model: Darknet, blocks: list[Block], rank: str = "mean") -> dict[int, float]:
    """Per block (keyed by its shortcut layer): mean or max |γ| of conv2, the conv before it."""
    if rank not in RANKS:
        raise YoloSlimError(f"--rank must be one of {RANKS}, got {rank!r}")
    out = {}
    for b in blocks:
        g = model.module_list[b.conv2].bn.weight.detach().abs().double()
        out[b.shortcut] = float(g.mean() if rank == "mean" else g.max())
    return out


def choose_blocks(blocks: list[Block], scores: dict[int, float], n: int) -> list[Block]:
    """The n blocks with the smallest score (ties: the earlier block goes first)."""
    if n < 0 or n > len(blocks):
        raise YoloSlimError(f"--shortcuts must be in [0, {len(blocks)}] (the removable blocks "
                            f"of this cfg; see --list), got {n}")
    order = sorted(blocks, key=lambda b: (scores[b.shortcut], b.shortcut))
    return sorted(order[:n], key=lambda b: b.shortcut)


def block_cuts(model: Darknet, blocks: list[Block]) -> dict[int, np.ndarray]:
    """Removing a block = cutting every channel of its last conv (fold.py does the rest)."""
    return {b.conv2: np.ones(model.out_channels[b.conv2], bool) for b in blocks}


@torch.no_grad()
def compact_blocks(folded: Darknet, blocks: list[Block]) -> tuple[Darknet, dict[int, int]]:
    """Drop the blocks' sections from the folded model. Returns the new model and old -> new
    index of every layer output that still exists (a removed shortcut maps to its input x)."""
    drop = {j for b in blocks for j in b.layers}
    by_short = {b.shortcut: b for b in blocks}
    n = len(folded.module_list)
    kept = [i for i in range(n) if i not in drop]
    new_of = {i: k for k, i in enumerate(kept)}

    def where(j: int) -> int:
        while j in by_short:
            j = by_short[j].source
        return new_of[j]  # KeyError = a reference into a block: analyze_blocks excludes it

    defs = [copy.deepcopy(folded.module_defs[0])]
    defs += [section_of(folded.module_defs[i + 1]).renumber(folded.module_defs[i + 1], i, new_of[i], where)
             for i in kept]
    new = Darknet(defs)
    for i in kept:
        new.module_list[new_of[i]].load_state_dict(folded.module_list[i].state_dict())
    new.header, new.seen = tuple(folded.header), int(folded.seen)
    index = {i: where(i) for i in range(n) if i in new_of or i in by_short}
    return new, index


def depth(model: Darknet) -> int:
    return len(conv_layers(model))


def verify_blocks(model: Darknet, folded: Darknet, compact: Darknet, blocks: list[Block],
                  img_hw: tuple[int, int] | None = None, seed: int = 0) -> dict[str, Any]:
    """max |Δ| of raw head maps: compact vs folded (float rounding) and vs masked (border gap)."""
    return verify(model, folded, compact, block_cuts(model, blocks), img_hw, seed)


def blocks_text(defs: list[dict[str, Any]], model: Darknet | None = None, rank: str = "mean") -> str:
    """Every [shortcut]: removable block (with its score when a model is given) or why not."""
    blocks, why = analyze_blocks(defs)
    scores = block_scores(model, blocks, rank) if model is not None else {}
    ranked = sorted(blocks, key=lambda b: (scores.get(b.shortcut, 0), b.shortcut))
    order = {b.shortcut: k for k, b in enumerate(ranked)}
    lines = [f"shortcut  convs     x  {rank}|γ|  rank   "
             f"({len(blocks)} removable of {len(blocks) + len(why)})"]
    for b in blocks:
        sc = f"{scores[b.shortcut]:8.4g}  {order[b.shortcut] + 1:4d}" if scores else "       -     -"
        lines.append(f"{b.shortcut:8d}  {b.conv1:3d},{b.conv2:3d}  {b.source:3d}  {sc}")
    lines += [f"{s:8d}  kept: {r}" for s, r in sorted(why.items())]
    return "\n".join(lines)


def removed_table(blocks: list[Block], scores: dict[int, float]) -> list[dict[str, Any]]:
    return [{"shortcut": b.shortcut, "convs": [b.conv1, b.conv2], "source": b.source,
             "score": scores[b.shortcut]} for b in blocks]


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """python -m yolo_slim.prune.layers CFG: the removable blocks of a cfg and why others stay."""
    p = Parser(prog="python -m yolo_slim.prune.layers",
               description="The removable residual blocks of a cfg, and why the others stay.")
    p.add_argument("cfg")
    a = parse(p, argv)
    if a is None:  # --help
        return 0
    print(blocks_text(parse_cfg(a.cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
