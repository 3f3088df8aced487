"""--target-speedup X / --target-latency MS in sparse training: the controller steers on the
latency the table predicts for the compact model of the current dead set (at the widths
--round-to auto leaves: prox.ChannelClasses.cost_if_cut, the pruner's own rule), and the table
is corrected by the runtime, as the pruner's closed loop does (prune/pipeline.closed_loop).

At the end of every epoch the compact model of the dead set as it stands is built — the cut is
free, so this is the model that will ship — and timed on the runtime interleaved with the
uncut model (`measure`: tools/latency.measure_hook, injected because train/ sits below
deploy/). The measured share of the uncut latency over the predicted share is one estimate of
the correction k, the median of the last three estimates (of cuts that remove at least 5% of
the predicted latency: below that a ratio of two timings is mostly noise) is k; the controller
then aims the prediction at desired / k. Each estimate is the ratio of the two models' fastest
rounds (the table is measured so too: the median carries other jobs' load) and clipped to
[1/1.5, 1.5] — a timing further off the table than that is taken for noise, not a model. `--target-latency MS` sets the
desired share from the measured uncut latency (MS / measured), `--target-speedup X` at 1 / X.

Under DDP only rank 0 measures; every rank takes rank 0's state at the next epoch start, so
the dead sets stay identical. Saved in last.pt: --resume continues with the same correction.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

KEEP = 3         # the correction is the median of this many latest estimates
MIN_CUT = 0.05   # ... of cuts predicted to save at least this share of the latency
MAX_K = 1.5      # an estimate is clipped to [1/1.5, 1.5]: the table is trusted that far
Measure = Callable[[dict[str, torch.nn.Module], tuple[int, int]], dict[str, Any]]


class MeasuredTarget:
    """The latency target of sparse training: desired share, measured correction, columns."""

    def __init__(self, predicted_full_ms: float, speedup: float = 0.0, latency_ms: float = 0.0,
                 measure: Measure | None = None, strategy: str = "shortcut",
                 img_hw: tuple[int, int] = (416, 416), table: str = ""):
        if (speedup > 0) == (latency_ms > 0):
            raise ValueError("give one of a speed-up or a latency target")
        self.speedup, self.latency_ms = speedup, latency_ms
        self.measure, self.strategy, self.img_hw, self.table = measure, strategy, img_hw, table
        self.full_ms = predicted_full_ms  # the uncut model: predicted until first measured
        self.correction = 1.0             # median of the last KEEP estimates below
        self.estimates: list[float] = []  # measured share / predicted share, per measured cut
        self.last: dict[str, float] = {}

    def desired(self) -> float:
        """The share of the uncut latency the run must reach, on the runtime."""
        return 1 / self.speedup if self.speedup else min(1.0, self.latency_ms / self.full_ms)

    def controller_target(self) -> float:
        """What the controller aims the table's prediction at."""
        return min(0.999, max(1e-3, self.desired() / self.correction))

    def compact(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the pruner's --dead cut makes of `model` now (no verification)."""
        from yolo_slim.prune.channels import PruneOptions, prune_model
        opts = PruneOptions(strategy=self.strategy, dead=True, round_to="auto",
                            latency_table=self.table or None, img_size=self.img_hw)
        was = model.training
        try:
            return prune_model(model, opts, check=False).compact
        finally:
            model.train(was)

    def update(self, model: torch.nn.Module, predicted_share: float) -> dict[str, float]:
        """Time the compact model of the current dead set against the uncut one; the columns."""
        cols = {"predicted_speedup": 1 / predicted_share, "target_share": self.controller_target()}
        if self.measure is None:
            return cols
        m = getattr(model, "module", model)
        was = m.training
        try:
            out = self.measure({"uncut": m.eval(), "cut": self.compact(m)}, self.img_hw)["models"]
        finally:
            m.train(was)
        # the fastest of the rounds, as the table is measured: on a shared machine the median
        # carries the other jobs' load (a 1.9x cut measured 0.94x under a test run)
        measured = float(out["cut"]["min_ms"]) / float(out["uncut"]["min_ms"])
        self.full_ms = float(out["uncut"]["min_ms"])
        if predicted_share < 1 - MIN_CUT:
            self.estimates.append(min(MAX_K, max(1 / MAX_K, measured / predicted_share)))
            self.correction = float(np.median(self.estimates[-KEEP:]))
        self.last = {"measured_ms": float(out["cut"]["min_ms"]), "measured_speedup": 1 / measured}
        return {**cols, **self.last, "correction": self.correction,
                "target_share": self.controller_target()}

    def sync(self) -> None:
        """DDP: every rank takes rank 0's measurements (only rank 0 measures)."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            box = [self.state_dict()]
            dist.broadcast_object_list(box, 0)
            self.load_state_dict(box[0])

    def state_dict(self) -> dict[str, Any]:
        return {"full_ms": self.full_ms, "correction": self.correction, "last": dict(self.last),
                "estimates": list(self.estimates)}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.full_ms, self.correction = st["full_ms"], st["correction"]
        self.last = dict(st.get("last", {}))
        self.estimates = list(st.get("estimates", []))
