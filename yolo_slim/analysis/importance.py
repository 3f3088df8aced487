"""Per-channel importance scores for channel pruning (`--importance bn|l1|rank`).

A score is one number per node of the channel graph (NaN where the node has no BN γ, which the
mask machinery never cuts); it replaces |γ| in `prune.masks.MaskSolver` and everything stays as
it was: global threshold / percent / FLOPs target / --layer-keep / --round-to / per-unit ratios,
the classes of tied channels, β folding of the cut channels (a cut channel still outputs act(β),
whatever chose it) and the verification of the compact model.

- ``bn``: |γ| (network slimming). Comparable across layers because BN normalises every channel.
- ``l1``: Σ|W| of each output filter × |γ|/sqrt(var+eps): the L1 norm of the filter once BN is
  folded into it (Li et al. 2017 on the fused conv). Raw L1 norms grow with the fan-in
  (in_channels·k²) and with 1/σ, so they are not comparable across layers: each layer's scores
  are divided by their mean (every layer averages 1), and a global threshold then cuts channels
  that are weak *relative to their layer*. The price: a layer sparse training emptied as a whole
  no longer looks empty; after --sr prefer ``bn``.
- ``rank``: HRank (Lin et al. 2020): the mean matrix rank of each channel's output map (after BN
  and activation) over a fixed batch of training images, as a fraction of full rank min(H, W),
  so layers of different resolution compare on one [0, 1] scale. Many channels tie at full rank:
  ties are broken by the channel's mean |activation| with a weight below half the rank's own
  resolution (1 / (images · min(H, W))), so it never reorders two different mean ranks.
  Deterministic: the first `batches` batches of the .data train list, no shuffle and no
  augmentation, model in eval mode.

Shortcut groups: the solver's slim strategy keeps a class while *any* member scores above the
threshold, i.e. a group's score per channel is the **max** over its members. Max, not sum: a sum
grows with the group's length, so under one global threshold long residual chains would never be
cut while single convs would; the max keeps a group channel on the scale of one conv channel and
is exactly the union of the members' masks.
"""
from __future__ import annotations

import numpy as np
import torch

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.analysis.graph import ChannelGraph
from yolo_slim.nn.model import Darknet

IMPORTANCE = ("bn", "l1", "rank")


def bn_scores(model: Darknet, g: ChannelGraph) -> np.ndarray:
    out = np.full(len(g.root), np.nan)
    for i, nodes in g.conv_nodes.items():
        bn = model.module_list[i].bn
        if bn is not None:
            out[nodes] = bn.weight.detach().abs().double().cpu().numpy()
    return out


def _per_layer_mean_one(v: np.ndarray) -> np.ndarray:
    m = float(v.mean()) if v.size else 0.0
    return v / m if m > 0 else v


@torch.no_grad()
def l1_scores(model: Darknet, g: ChannelGraph) -> np.ndarray:
    out = np.full(len(g.root), np.nan)
    for i, nodes in g.conv_nodes.items():
        m = model.module_list[i]
        if m.bn is None:
            continue
        w = m.conv.weight.detach().double().abs().sum((1, 2, 3))
        scale = m.bn.weight.detach().double().abs() / torch.sqrt(m.bn.running_var.double() + m.bn.eps)
        out[nodes] = _per_layer_mean_one((w * scale).cpu().numpy())
    return out


@torch.no_grad()
def rank_scores(model: Darknet, g: ChannelGraph, images: torch.Tensor,
                chunk: int = 4) -> np.ndarray:
    """Mean rank fraction of every BN conv's output maps over `images` (see module docstring)."""
    if images.ndim != 4 or len(images) == 0:
        raise YoloSlimError("--importance rank needs at least one image")
    convs = [i for i in g.conv_nodes if model.module_list[i].bn is not None]
    rank_sum = {i: 0.0 for i in convs}
    abs_sum = {i: 0.0 for i in convs}
    full = {}

    def hook(i):
        def fn(mod, inp, out):
            h, w = out.shape[-2:]
            full[i] = min(h, w)
            rank_sum[i] = rank_sum[i] + torch.linalg.matrix_rank(out.float()).double().sum(0)
            abs_sum[i] = abs_sum[i] + out.double().abs().mean((2, 3)).sum(0)
        return fn
    was = model.training
    model.eval()
    handles = [model.module_list[i].register_forward_hook(hook(i)) for i in convs]
    try:
        for b in range(0, len(images), chunk):  # chunks bound the memory of the hooks' SVDs
            model.forward_raw(images[b:b + chunk])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    n = len(images)
    out = np.full(len(g.root), np.nan)
    for i in convs:
        frac = (rank_sum[i] / (n * full[i])).cpu().numpy()
        a = abs_sum[i].cpu().numpy()
        tie = a / a.max() if a.max() > 0 else a
        out[g.conv_nodes[i]] = frac + tie * 0.49 / (n * full[i])
    return out


def rank_images(data: str, img_size: int, batches: int = 2, batch_size: int = 8) -> torch.Tensor:
    """The first `batches` batches of the .data file's train list, letterboxed, unaugmented."""
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    if batches < 1 or batch_size < 1:
        raise YoloSlimError("--rank-batches and the batch size must be at least 1")
    dc = parse_data_file(data)
    loader, _ = create_dataloader(dc.train, img_size, batch_size, augment=False, shuffle=False,
                                  workers=0, nc=dc.classes, limit=batches * batch_size,
                                  verbose=False)
    imgs = [b[0] for _, b in zip(range(batches), loader)]
    if not imgs:
        raise YoloSlimError(f"{data}: the train list has no usable image for --importance rank")
    return torch.cat(imgs).float()


def node_scores(model: Darknet, g: ChannelGraph, criterion: str = "bn", data: str | None = None,
                img_hw: tuple[int, int] | None = None, batches: int = 2,
                batch_size: int = 8, images: torch.Tensor | None = None) -> np.ndarray:
    """Per-node score of `criterion` (NaN where a node has no BN γ)."""
    if criterion not in IMPORTANCE:
        raise YoloSlimError(f"--importance must be one of {IMPORTANCE}, got {criterion!r}")
    if criterion == "bn":
        return bn_scores(model, g)
    if criterion == "l1":
        return l1_scores(model, g)
    if images is None:
        if not data:
            raise YoloSlimError("--importance rank needs --data (its train images give the maps)")
        size = (img_hw or (416, 416))[1]
        images = rank_images(data, size, batches, batch_size)
    return rank_scores(model, g, images)
