"""Random darknet detectors for property tests (importable by any test: `from netgen import ...`).

`random_darknet(seed)` returns cfg text mixing the structures real cfgs use: a stem, stride-2
convs, residual stages (1x1 + 3x3 + [shortcut], sometimes from two layers back too), v4-tiny CSP
blocks (`[route] groups=2 group_id=1`), SPP (maxpool 5/9/13 stride 1 + concat), maxpool size=2
stride=1, grouped convs, convs without BN, leaky/mish/swish/linear activations, and two YOLO
heads joined by upsample + route. Routes use both relative and absolute layer references.
"""
from __future__ import annotations

import random

import torch

ACTS = ["leaky", "mish", "swish", "linear"]


class _Net:
    def __init__(self, rng: random.Random, size: int, nc: int, only_1x1: bool = False):
        self.rng, self.ch, self.n, self.only_1x1 = rng, 3, 0, only_1x1
        self.lines = [f"[net]\nwidth={size}\nheight={size}\nchannels=3\n"]
        self.nc = nc

    def add(self, text: str, ch: int) -> int:
        self.lines.append(text)
        self.ch, self.n = ch, self.n + 1
        return self.n - 1  # index of the layer just added

    def conv(self, filters: int, size: int = 3, stride: int = 1, bn: bool = True,
             act: str | None = None, groups: int = 1) -> int:
        act = act or self.rng.choice(ACTS)
        size = 1 if self.only_1x1 else size
        keys = [f"filters={filters}", f"size={size}", f"stride={stride}", "pad=1",
                f"activation={act}"]
        if bn:
            keys.insert(0, "batch_normalize=1")
        if groups > 1:
            keys.append(f"groups={groups}")
        return self.add("[convolutional]\n" + "\n".join(keys) + "\n", filters)

    def route(self, layers: list[int], ch: int, groups: int = 1, gid: int = 0) -> int:
        extra = f"groups={groups}\ngroup_id={gid}\n" if groups > 1 else ""
        refs = ",".join(str(l) for l in layers)
        return self.add(f"[route]\nlayers={refs}\n{extra}", ch)

    def shortcut(self, frm: list[int], act: str = "linear") -> int:
        return self.add(f"[shortcut]\nfrom={','.join(map(str, frm))}\nactivation={act}\n", self.ch)

    def maxpool(self, size: int, stride: int) -> int:
        return self.add(f"[maxpool]\nsize={size}\nstride={stride}\n", self.ch)

    # ---- blocks ---------------------------------------------------------------------------------
    def residual(self, n: int) -> None:
        c = self.ch
        for _ in range(n):
            self.conv(max(2, c // 2), 1)
            self.conv(c, 3)
            frm = [-3]
            if self.rng.random() < 0.25 and self.n >= 6 and "shortcut" in self.lines[-3]:
                frm.append(-6)  # a shortcut summing two earlier maps of the same chain
            self.shortcut(frm, self.rng.choice(["linear", "linear", "leaky"]))

    def csp(self) -> None:
        c = self.ch
        a = self.conv(c, 3)
        self.route([-1], c // 2, groups=2, gid=1)
        self.conv(c // 2, 3)
        self.conv(c // 2, 3)
        self.route([-1, -2], c)
        d = self.conv(c, 1)
        self.route([a, d], 2 * c)  # absolute references

    def spp(self) -> None:
        c = self.conv(max(2, self.ch // 2), 1)
        cc = self.ch
        for k in (5, 9, 13):
            self.add(f"[maxpool]\nsize={k}\nstride=1\n", cc)
            if k != 13:
                self.route([c], cc)
        self.route([-1, -3, -5, -6], 4 * cc)

    def head(self) -> int:
        self.conv(self.ch, 3)
        na = 3
        self.conv(na * (5 + self.nc), 1, bn=False, act="linear")
        return self.add(f"[yolo]\nmask=0,1,2\nanchors=4,6,8,10,12,16,20,24,30,32,40,48\n"
                        f"classes={self.nc}\nnum=6\n", self.ch)

    def text(self) -> str:
        return "\n".join(self.lines)


def random_darknet(seed: int, size: int = 64, nc: int = 2, stages: int | None = None,
                   only_1x1: bool = False) -> str:
    """Cfg text of a random but valid darknet detector (see module docstring). only_1x1: every
    conv has size=1, so no conv has zero-padded borders (β folding is then exact everywhere)."""
    rng = random.Random(seed)
    net = _Net(rng, size, nc, only_1x1)
    base = rng.choice([4, 6, 8])
    net.conv(base, 3)
    if rng.random() < 0.5:
        net.maxpool(2, 1)  # tiny-yolo's size-preserving pool (asymmetric -inf padding)
    stages = stages or rng.randint(2, 3)
    feats = []
    for s in range(stages):
        net.conv(base * 2 ** (s + 1), 3, stride=2)
        kind = rng.choice(["residual", "csp", "plain", "grouped"])
        if kind == "residual":
            net.residual(rng.randint(1, 3))
        elif kind == "csp":
            net.csp()
        elif kind == "grouped":
            net.conv(net.ch, 3, groups=2)
            net.conv(net.ch, 1)
        else:
            net.conv(net.ch, 3, bn=rng.random() < 0.7)
        feats.append((net.n - 1, net.ch))
    if rng.random() < 0.6:
        net.spp()
    net.conv(net.ch // 2 if net.ch >= 8 else net.ch, 1)
    branch, branch_ch = net.n - 1, net.ch
    net.head()
    # second head: back to the branch, 1x1, upsample, concat with an earlier stage's feature
    net.route([branch - net.n], branch_ch)
    net.conv(max(2, branch_ch // 2), 1)
    net.add("[upsample]\nstride=2\n", net.ch)
    skip, skip_ch = feats[-2]
    net.route([-1, skip], net.ch + skip_ch)
    net.conv(net.ch // 2, 3)
    net.head()
    return net.text()


@torch.no_grad()
def randomize_bn(model, seed: int, zero_fraction: float = 0.0) -> None:
    """Random BN γ (both signs, some near zero), β, running mean and a positive running var;
    with zero_fraction, that share of γ is set to exactly 0 (as after sparse training)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_((torch.rand(n, generator=gen) * 2 - 1) * 1.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            if zero_fraction:
                m.weight[torch.rand(n, generator=gen) < zero_fraction] = 0
        elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.out_channels, generator=gen) * 0.2)


def random_model(seed: int, text: str | None = None, name: str | None = None, **kw):
    """Eval-mode Darknet of `text` (default: random_darknet(seed, **kw)): conv weights from torch
    seed `seed`, BN statistics from randomize_bn(seed) -- the same model for the same seed."""
    from yolo_slim.darknet.cfg import parse_cfg_text
    from yolo_slim.nn.model import Darknet
    torch.manual_seed(seed)
    m = Darknet(parse_cfg_text(text or random_darknet(seed, **kw), name or f"<random {seed}>")).eval()
    randomize_bn(m, seed)
    return m


def write_random_net(out_dir, seed: int, text: str | None = None, stem: str = "n"):
    """random_model(seed, text) written as <out_dir>/<stem>.cfg + .weights: (cfg, weights, model)."""
    from pathlib import Path

    from yolo_slim.nn.weights import save_darknet_weights
    text = text or random_darknet(seed)
    cfg, wts = Path(out_dir) / f"{stem}.cfg", Path(out_dir) / f"{stem}.weights"
    cfg.write_text(text)
    m = random_model(seed, text)
    save_darknet_weights(m, str(wts))
    return cfg, wts, m


def standard_model(name: str, corpus_dir, size: int = 64, bn_seed: int = 1):
    """A standard cfg (the project's cfg/, else the corpus copy) at `size` px, in eval mode,
    seed-0 conv init and random BN statistics — the same model for every test module."""
    from pathlib import Path

    from yolo_slim.darknet.cfg import parse_cfg
    from yolo_slim.nn.model import Darknet
    local = Path(__file__).resolve().parents[1] / "cfg" / f"{name}.cfg"
    defs = parse_cfg(str(local if local.is_file() else Path(corpus_dir) / "AlexeyAB" / f"{name}.cfg"))
    defs[0]["width"] = defs[0]["height"] = str(size)
    torch.manual_seed(0)
    m = Darknet(defs).eval()
    randomize_bn(m, bn_seed)
    return m
