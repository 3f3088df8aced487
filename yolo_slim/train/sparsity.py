"""Sparse training of the BatchNorm channels of prunable convs, as one engine hook.

Two updates (`--sparsity-update`):
- prox (default): after every optimizer step, the group soft-threshold of yolo_slim.train.prox
  on each channel class's (γ, β): dead channels are exactly (0, 0), so cutting them is exact.
- subgradient: the older tools' L1 subgradient s·sign(γ) added to the gradients of γ.

Either runs once per optimizer step, after backward, after the AMP scaler has unscaled the
gradients and after DDP's all-reduce (the engine's after_backward/after_step order), so its
strength is independent of the loss scale, the batch size and gradient accumulation. Both take
per-channel weights (`--sparsity-weight`); with `--target-flops F` (prox) a controller sets s, or
(`--target-kill path`) classes fade out along a path, so the dead channels leave F of the FLOPs;
with `--target-speedup X` / `--target-latency MS` the same controller steers on the latency the
table predicts for the compact model, corrected every epoch by timing it (train/latency_loop.py).

The saved models hold the exact zeros: the prox runs after every step (momentum or a gradient
may move a zeroed pair on the next step; the prox then decides again), and `finalize` zeroes the
raw model's dead classes in the EMA copy too (its γ/β only decay toward zero) before it is
evaluated and saved, so best.pt's dead set is the raw model's.

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
from yolo_slim.train.engine import TrainHooks
from yolo_slim.train.gamma_plot import GammaHistory
from yolo_slim.analysis.latency import LatencyTable
from yolo_slim.train.latency_loop import MeasuredTarget
from yolo_slim.train.prox import ChannelClasses, FlopsController

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

    def __init__(self, model: Darknet, layers: list[int], schedule: SparsitySchedule,
                 weights: list[torch.Tensor] | None = None):
        model = getattr(model, "module", model)
        self.weights = weights  # per layer, per channel multiplier of s (None: 1)
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
        ws = self.weights or [None] * len(gammas)
        for g, s, w in zip(gammas, self.schedule.channel_s(gammas, epoch, epochs), ws):
            if g.grad is None:
                g.grad = torch.zeros_like(g)
            g.grad.add_((s if w is None else s * w.to(s)) * torch.sign(g))

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


LATENCY_SLACK = 0.02  # a latency target is met within 2% of its predicted share (prox.py)
FADE = 0.1  # --target-kill path: share of the shrink phase over which a class fades to zero


class SparsityHook(TrainHooks):
    """The engine hook of sparse training: the penalty (prox or subgradient) on the channel
    classes `strategy` may prune, the FLOPs controller, the EMA's dead set, and the per-epoch
    columns (|γ| share and quantiles, dead channels, FLOPs if cut now, s) + gamma_hist.png."""

    def __init__(self, model: Darknet, strategy: str, schedule: SparsitySchedule, epochs: int,
                 output_dir: str, update: str = "prox", weight: str = "uniform",
                 target_flops: float = 0.0, recover: float = 0.3,
                 img_hw: tuple[int, int] = (416, 416), layer_keep: float = 0.1,
                 latency: LatencyTable | None = None, kill: str = "all", importance: str = "norm",
                 latency_target: MeasuredTarget | None = None):
        self.kill, self.importance = kill, importance
        self.taylor: torch.Tensor | None = None  # summed squared Taylor scores per class
        self.classes = ChannelClasses(model, strategy, img_hw, weight, layer_keep, latency,
                                      "latency" if latency_target else "flops")
        self.loop = latency_target  # --target-speedup/--target-latency (train/latency_loop.py)
        if latency_target is not None:
            target_flops = latency_target.controller_target()
            self.classes.slack = LATENCY_SLACK
        self.classes.with_beta = kill != "path-fold"
        ws = self.classes.channel_weights() if weight != "uniform" else None  # None: exactly 1
        self.sp = BNSparsity(model, self.classes.layers, schedule, ws)
        self.schedule, self.epochs, self.output_dir, self.update = schedule, epochs, output_dir, update
        self.controller = FlopsController(target_flops, schedule.s, recover) if target_flops else None
        self.frozen_dead: torch.Tensor | None = None
        self.entry: torch.Tensor | None = None  # --target-kill path: norm when a class began to fade
        self.last_dead: torch.Tensor | None = None  # classes the last prox left at (0, 0)
        self.history = GammaHistory()
        self.epoch = 0
        self.s_now = schedule.s

    def epoch_start(self, epoch: int, model: torch.nn.Module) -> None:
        self.epoch = epoch
        if self.loop is not None and self.controller is not None and not self.controller.frozen:
            self.loop.sync()  # the last epoch's measurement corrects the target
            self.controller.target = self.loop.controller_target()

    def after_backward(self, model: torch.nn.Module, step: int) -> None:
        if self.update == "subgradient":
            self.sp.apply(self.epoch, self.epochs)
        if self.importance == "taylor":  # what zeroing each class would cost, from this step's loss
            t = self.classes.taylor()
            self.taylor = t if self.taylor is None else self.taylor + t

    def class_s(self) -> torch.Tensor:
        """The schedule's s per class (the largest over its member channels)."""
        out = torch.zeros(self.classes.n)
        ch = self.schedule.channel_s(self.sp.gammas, self.epoch, self.epochs)
        for s, sel, cls in zip(ch, self.classes.sel, self.classes.cls):
            out.scatter_reduce_(0, cls, s.detach().float().cpu()[sel], "amax")
        return out

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float,
                   progress: float) -> None:
        if self.update != "prox":
            return
        c, cl = self.controller, self.classes
        # the optimizer step just moved the zeroed pairs (momentum, gradient): what was dead is
        # what the previous prox left at zero
        if self.last_dead is None:
            self.last_dead = cl.dead()
        if c is not None and (c.frozen or not c.shrinking(progress)):
            if not c.frozen:  # recovery starts: complete the dead set to the target, hold it
                self.frozen_dead = cl.cut_to_target(self.last_dead, c.target, self.scores())
                c.frozen = True
            cl.scale((~self.frozen_dead).float())
            self.last_dead, self.s_now = self.frozen_dead.clone(), 0.0
            return
        if c is not None and self.kill.startswith("path"):
            self.last_dead = self.fade(progress)
            return
        if c is not None:
            self.s_now = c.update(progress, cl.cost_if_cut(self.last_dead))
            # only the classes that reaching the target needs (the dead + the cheapest live ones
            # by ‖(γ, β)‖ / w) are shrunk: the penalty never pushes the cut past the target
            s = cl.cut_to_target(self.last_dead, c.target).float() * self.s_now
        else:
            s = self.class_s()
            self.s_now = float(s.mean()) if cl.n else 0.0
        # the step size of the group that holds γ (BN weights; β's group shares it after warm-up)
        group = next(g for g in optimizer.param_groups
                     if any(p is self.sp.gammas[0] for p in g["params"])) if cl.n else None
        if group is None:
            return
        step = group["lr"] / (1 - group.get("momentum", 0.0))
        self.last_dead = cl.prox(step * s * cl.weight) == 0

    def scores(self) -> torch.Tensor | None:
        """What orders the classes to cut: √(summed squared Taylor terms) with --target-importance
        taylor (once a step has been seen), else None (cut_to_target's ‖(γ, β)‖)."""
        return self.taylor.sqrt() if self.importance == "taylor" and self.taylor is not None else None

    def fade(self, progress: float) -> torch.Tensor:
        """--target-kill path: a class joins the kill set when the FLOPs path needs it (least
        important first, by scores() or ‖(γ, β)‖, per cost) and fades linearly to exactly (0, 0)
        over FADE of the shrink phase, so channels die one by one instead of in the s
        controller's cliff (docs/real-model.md). Returns the dead classes."""
        c, cl = self.controller, self.classes
        if self.entry is None:
            self.entry = torch.zeros(cl.n)
        need = cl.cut_to_target(self.last_dead, c.path(progress), self.scores())
        norms = cl.norms()
        new = need & (self.entry == 0) & (norms > 0)
        self.entry[new] = norms[new]
        self.entry[~need] = 0  # a class the path no longer needs stops fading where it is
        span = FADE * (1 - c.recover)
        dp, c.progress = max(progress - c.progress, 0.0), progress
        self.s_now = float((self.entry > 0).sum() - self.last_dead.sum())  # classes fading now
        return cl.prox(self.entry * (dp / span)) == 0

    def selectable(self, epoch: int) -> bool:
        """With a FLOPs target, best.pt is chosen among the epochs after the freeze: a model
        whose dead channels meet the target."""
        return self.controller is None or self.controller.frozen

    def finalize(self, model: torch.nn.Module) -> None:
        if self.update == "prox" and self.classes.n:
            self.classes.scale((~self.classes.dead()).float(), models=[model])

    def dead_stats(self) -> dict[str, float]:
        dead = self.classes.dead()
        n_dead = int(self.classes.members[dead.numpy()].sum())
        lat = {"latency_if_cut": self.classes.cost_if_cut(dead)} if self.loop is not None else {}
        return {"dead": n_dead, "dead_share": n_dead / max(1, int(self.classes.members.sum())),
                "flops_if_cut": self.classes.flops_if_cut(dead), **lat,
                ("fading" if self.kill.startswith("path") else "s_mean"): self.s_now}

    def epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        import os
        st = {**self.sp.stats(), **self.dead_stats()}
        if self.loop is not None:  # the compact model of this dead set, timed on the runtime
            st.update(self.loop.update(model, st["latency_if_cut"]))
        self.history.add(epoch, self.sp.abs_gamma(), f"dead {st['dead']}  FLOPs if cut "
                         f"{100 * st['flops_if_cut']:.0f}%  "
                         + (f"fading {st['fading']:.0f}" if "fading" in st else f"s {st['s_mean']:.3g}"))
        self.history.draw(os.path.join(self.output_dir, "gamma_hist.png"))
        return st

    def state_dict(self) -> dict:
        return {"history": self.history.state(), "s_now": self.s_now,
                "controller": self.controller.state_dict() if self.controller else None,
                "frozen_dead": self.frozen_dead, "last_dead": self.last_dead, "entry": self.entry,
                "taylor": self.taylor, "loop": self.loop.state_dict() if self.loop else None}

    def load_state_dict(self, state: dict) -> None:
        if "history" in state:
            self.history.load_state(state["history"])
        self.s_now = state.get("s_now", self.s_now)
        if self.controller is not None and state.get("controller"):
            self.controller.load_state_dict(state["controller"])
        self.frozen_dead = state.get("frozen_dead")
        self.last_dead = state.get("last_dead")
        self.entry = state.get("entry")
        self.taylor = state.get("taylor")
        if self.loop is not None and state.get("loop"):
            self.loop.load_state_dict(state["loop"])


def make_sparsity_hook(model: Darknet, strategy: str, schedule: SparsitySchedule, epochs: int,
                       output_dir: str, **kw) -> SparsityHook:
    """The engine hook for sparse training on the convs `strategy` may prune (from the graph)."""
    hook = SparsityHook(model, strategy, schedule, epochs, output_dir, **kw)
    what = (f"prox on (gamma, beta) of {hook.classes.n} channel classes" if hook.update == "prox"
            else "L1 subgradient on gamma")
    how = (f"channels fading along the path by {hook.importance}" if hook.kill.startswith("path")
           else "s adapted")
    lt = kw.get("latency_target")
    what_goal = (f"predicted latency <= {lt.desired():.3g} of the uncut model, corrected by the "
                 f"runtime every epoch" if lt else f"FLOPs <= {kw.get('target_flops')}")
    goal = (f", {how} for {what_goal} (last {kw.get('recover', 0.3)} of the run frozen)"
            if kw.get("target_flops") or lt else "")
    print(f"sparsity: {what}, s={schedule.s} ({schedule.kind}, {kw.get('weight', 'uniform')} "
          f"weights{goal}) on {len(hook.classes.layers)} prunable BN layers "
          f"({sum(g.numel() for g in hook.sp.gammas)} channels, strategy '{strategy}')")
    return hook
