"""TrainHooks: the extension points of the training loop (train/engine.py's docstring says
when each is called). Its own module so that the modules the engine imports (validation.py
asks whether a hook relabels) can name it without importing the engine: a cycle."""
from __future__ import annotations

from typing import Any

import torch

from yolo_slim.train.loss import LossHyp


class TrainHooks:
    """Extension points of the loop; see train/engine.py's docstring."""

    def relabel(self, imgs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return targets

    def eval_reference(self) -> tuple[torch.nn.Module, float] | None:
        return None

    def extra_loss(self, imgs: torch.Tensor, raw: list[torch.Tensor], targets: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]] | None:
        return None

    def use_loss_hyp(self, hyp: LossHyp) -> None:
        """Called once before training with the LossHyp the YOLO loss uses (one source of gains)."""

    def after_backward(self, model: torch.nn.Module, step: int) -> None:
        pass

    def after_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float,
                   progress: float) -> None:
        pass

    def finalize(self, model: torch.nn.Module) -> None:
        pass

    def selectable(self, epoch: int) -> bool:
        """Whether this epoch's model may become best.pt (e.g. not before a target is met)."""
        return True

    def epoch_start(self, epoch: int, model: torch.nn.Module) -> None:
        pass

    def epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Saved in last.pt and handed back to load_state_dict on --resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
