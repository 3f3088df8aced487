"""Sparse training: an L1 subgradient s·sign(γ) on the BatchNorm scales of prunable convs.

The penalty is added to the *gradients* (not the loss) once per optimizer step, after backward,
after the AMP scaler has unscaled them and after DDP's all-reduce. That makes its strength
independent of the loss scale, the batch size and gradient accumulation — the older tools added
it to scaled gradients (sparsity silently off under AMP) or scaled the loss but not the penalty.

Schedules for s (per channel, per epoch):
- constant:      s everywhere, always.
- global-decay:  s until `decay_start` of the epochs, then s × `decay_factor` everywhere.
- local-decay:   s until `decay_start`; afterwards the `keep_fraction` of prunable channels with
                 the largest |γ| (ranked globally) get s × `decay_factor`, the rest keep s — the
                 important channels stop shrinking while the others are still pushed to zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from yolo_slim.nn.model import Darknet

SCHEDULES = ("constant", "global-decay", "local-decay")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
SMALL_GAMMA = 0.01  # |γ| below this counts as "sparse" in the logs


@dataclass
class SparsitySchedule:
    s: float = 0.001
    kind: str = "constant"
    decay_start: float = 0.5     # fraction of the epochs after which decay applies
    decay_factor: float = 0.01   # s multiplier once decayed
    keep_fraction: float = 0.15  # local-decay: share of channels (largest |γ|) that decay

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"sparsity schedule must be one of {SCHEDULES}, not {self.kind!r}")

    def decayed(self, epoch: int, epochs: int) -> bool:
        return epoch >= self.decay_start * epochs

    def channel_s(self, gammas: list[torch.Tensor], epoch: int, epochs: int) -> list[torch.Tensor]:
        """The s applied to every channel of every prunable γ at this epoch."""
        full = [torch.full_like(g, self.s) for g in gammas]
        if self.kind == "constant" or not self.decayed(epoch, epochs):
            return full
        low = self.s * self.decay_factor
        if self.kind == "global-decay":
            return [torch.full_like(g, low) for g in gammas]
        flat = torch.cat([g.detach().abs().flatten() for g in gammas])
        k = int(round(self.keep_fraction * flat.numel()))
        if k == 0:
            return full
        # the k largest |γ| overall; ties at the boundary all count as large
        thr = flat.topk(k).values.min()
        return [torch.where(g.detach().abs() >= thr, torch.full_like(g, low), s)
                for g, s in zip(gammas, full)]


class BNSparsity:
    """Holds the prunable BN layers of a model and applies the L1 subgradient to them."""

    def __init__(self, model: Darknet, layers: list[int], schedule: SparsitySchedule):
        model = getattr(model, "module", model)
        self.layers = list(layers)
        self.bns = [model.module_list[i].bn for i in self.layers]
        if any(bn is None for bn in self.bns):
            raise ValueError("every prunable layer must have batch normalisation")
        self.schedule = schedule

    @property
    def gammas(self) -> list[torch.Tensor]:
        return [bn.weight for bn in self.bns]

    @torch.no_grad()
    def apply(self, epoch: int, epochs: int) -> None:
        """grad(γ) += s·sign(γ) for every prunable γ. Call after unscale, before step."""
        gammas = self.gammas
        for g, s in zip(gammas, self.schedule.channel_s(gammas, epoch, epochs)):
            if g.grad is None:
                g.grad = torch.zeros_like(g)
            g.grad.add_(s * torch.sign(g))

    @torch.no_grad()
    def abs_gamma(self) -> torch.Tensor:
        return torch.cat([g.detach().abs().flatten().float().cpu() for g in self.gammas])

    def stats(self) -> dict[str, float]:
        """Columns for results.csv: share of |γ| < 0.01 and |γ| quantiles."""
        a = self.abs_gamma()
        out = {"gamma_lt_0.01": float((a < SMALL_GAMMA).float().mean())}
        for q, v in zip(QUANTILES, torch.quantile(a, torch.tensor(QUANTILES))):
            out[f"gamma_q{int(q * 100)}"] = float(v)
        return out


class GammaHistory:
    """|γ| histograms per epoch, drawn as stacked ridgelines (TensorBoard's histogram view)
    into a plain PNG: the first epoch at the back (top), the latest in front (bottom)."""

    def __init__(self, bins: int = 60):
        self.bins = bins
        self.epochs: list[int] = []
        self.values: list[torch.Tensor] = []

    def add(self, epoch: int, abs_gamma: torch.Tensor) -> None:
        self.epochs.append(epoch)
        self.values.append(abs_gamma.float().cpu())

    def state(self) -> dict:
        return {"epochs": list(self.epochs), "values": [v.clone() for v in self.values]}

    def load_state(self, state: dict) -> None:
        self.epochs, self.values = list(state["epochs"]), list(state["values"])

    def draw(self, path: str, title: str = "|gamma| of prunable BN layers per epoch") -> None:
        import cv2
        import numpy as np

        if not self.values:
            return
        hi = max(float(v.max()) for v in self.values) or 1.0
        hists = [torch.histc(v, self.bins, 0.0, hi).numpy() for v in self.values]
        W, left, right, top, ridge = 760, 60, 20, 40, 70
        step = max(8, min(30, 360 // len(hists)))
        H = top + ridge + step * (len(hists) - 1) + 50
        img = np.full((H, W, 3), 255, np.uint8)
        xs = np.linspace(left, W - right, self.bins)
        peak = max(h.max() for h in hists) or 1.0
        for k, h in enumerate(hists):
            base = top + ridge + step * k
            ys = base - (np.sqrt(h / peak) * ridge)  # sqrt keeps the small bins visible
            pts = np.stack([xs, ys], 1).astype(np.int32)
            poly = np.concatenate([[[left, base]], pts, [[W - right, base]]]).astype(np.int32)
            shade = int(230 - 170 * k / max(1, len(hists) - 1))
            cv2.fillPoly(img, [poly], (255, shade, shade // 2))  # later epochs darker
            cv2.polylines(img, [pts], False, (90, 40, 0), 1, cv2.LINE_AA)
            if k == 0 or k == len(hists) - 1 or k % max(1, len(hists) // 6) == 0:
                cv2.putText(img, f"ep {self.epochs[k]}", (4, base), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4, (0, 0, 0), 1, cv2.LINE_AA)
        y = H - 25
        for frac in (0, 0.25, 0.5, 0.75, 1.0):
            x = int(left + frac * (W - right - left))
            cv2.line(img, (x, y - 4), (x, y), (0, 0, 0), 1)
            cv2.putText(img, f"{frac * hi:.3g}", (x - 12, y + 14), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, title, (left, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
        from yolo_slim.core.errors import atomic_write_bytes
        atomic_write_bytes(path, cv2.imencode(".png", img)[1].tobytes())


def make_sparsity_hook(model: Darknet, strategy: str, schedule: SparsitySchedule, epochs: int,
                       output_dir: str):
    """The engine hook for sparse training on the convs `strategy` may prune (from the graph)."""
    import os

    from yolo_slim.train.engine import TrainHooks
    from yolo_slim.analysis.graph import prunable_convs

    layers = prunable_convs(getattr(model, "module", model).module_defs, strategy)

    class SparsityHook(TrainHooks):
        def __init__(self) -> None:
            self.sp = BNSparsity(model, layers, schedule)
            self.history = GammaHistory()
            self.epoch = 0

        def epoch_start(self, epoch: int, model: torch.nn.Module) -> None:
            self.epoch = epoch

        def after_backward(self, model: torch.nn.Module, step: int) -> None:
            self.sp.apply(self.epoch, epochs)

        def epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
            self.history.add(epoch, self.sp.abs_gamma())
            self.history.draw(os.path.join(output_dir, "gamma_hist.png"))
            s = torch.cat([x.flatten() for x in schedule.channel_s(self.sp.gammas, epoch, epochs)])
            return {**self.sp.stats(), "s_mean": float(s.mean())}

        def state_dict(self) -> dict:
            return {"history": self.history.state()}

        def load_state_dict(self, state: dict) -> None:
            if "history" in state:
                self.history.load_state(state["history"])

    hook = SparsityHook()
    print(f"sparsity: L1 s={schedule.s} ({schedule.kind}) on {len(layers)} prunable BN layers "
          f"({sum(g.numel() for g in hook.sp.gammas)} channels, strategy '{strategy}')")
    return hook


PRUNE_STRATEGY = {0: "normal", 1: "shortcut"}  # --prune 0|1, the names users know


def make_train_hooks(cfg, model: Darknet) -> list:
    """train_sparse.py --sr: the sparsity hook configured from the TrainConfig flags."""
    from yolo_slim.core.errors import YoloSlimError
    if cfg.prune not in PRUNE_STRATEGY:
        raise YoloSlimError(f"--prune must be 0 (normal) or 1 (shortcut/slim), not {cfg.prune}")
    kind = cfg.sparsity or "constant"
    if kind not in SCHEDULES:
        raise YoloSlimError(f"--sparsity must be one of {', '.join(SCHEDULES)}, not {kind!r}")
    if cfg.s <= 0:
        raise YoloSlimError(f"--s must be positive, not {cfg.s}")
    if not (0 <= cfg.sparsity_decay_start <= 1 and 0 <= cfg.sparsity_decay_factor <= 1
            and 0 <= cfg.sparsity_keep_fraction <= 1):
        raise YoloSlimError("--sparsity-decay-start, --sparsity-decay-factor and "
                            "--sparsity-keep-fraction must be in [0, 1]")
    schedule = SparsitySchedule(s=cfg.s, kind=kind, decay_start=cfg.sparsity_decay_start,
                                decay_factor=cfg.sparsity_decay_factor,
                                keep_fraction=cfg.sparsity_keep_fraction)
    return [make_sparsity_hook(model, PRUNE_STRATEGY[cfg.prune], schedule, cfg.epochs,
                               cfg.output_dir)]
