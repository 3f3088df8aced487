"""Optimizer, learning-rate schedule and weight EMA for the training engine."""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                    nesterov: bool = True) -> torch.optim.SGD:
    """SGD with three groups: BN weights (no decay), conv weights (decay), all biases (no
    decay; warmed up from a higher LR). Decay on BN γ would fight the sparsity penalty and
    shrink every channel alike, so BN parameters never decay."""
    bn_w, conv_w, biases = [], [], []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn_w.append(m.weight)
            biases.append(m.bias)
        elif isinstance(m, nn.Conv2d):
            conv_w.append(m.weight)
            if m.bias is not None:
                biases.append(m.bias)
    known = {id(p) for p in bn_w + conv_w + biases}
    other = [p for p in model.parameters() if id(p) not in known]
    # groups as dicts: a group may be empty (a cfg without batch_normalize has no BN weights)
    opt = torch.optim.SGD([{"params": bn_w, "weight_decay": 0.0}], lr=lr, momentum=momentum,
                          nesterov=nesterov)
    opt.add_param_group({"params": conv_w + other, "weight_decay": weight_decay})
    opt.add_param_group({"params": biases, "weight_decay": 0.0})
    return opt


def lr_factor(x: float, epochs: int, schedule: str, lrf: float, steps: list[float],
              step_scale: float = 0.1) -> float:
    """LR multiplier at fractional epoch x: cosine from 1 to lrf, or step decay at the
    given fractions of the run."""
    if schedule == "cosine":
        return lrf + (1 - lrf) * (1 + math.cos(math.pi * min(x / max(epochs, 1), 1.0))) / 2
    return step_scale ** sum(x >= s * epochs for s in steps)


def set_lr(opt: torch.optim.Optimizer, ni: int, n_warm: int, base_lr: float, factor: float,
           momentum: float, warm_momentum: float, warm_bias_lr: float) -> float:
    """Set group LRs for micro-iteration ni: linear warm-up over n_warm iterations (biases
    come down from warm_bias_lr, the rest rise from 0; momentum rises), then the schedule."""
    lr = base_lr * factor
    for j, g in enumerate(opt.param_groups):
        if ni < n_warm:
            start = warm_bias_lr if j == 2 else 0.0
            g["lr"] = float(np.interp(ni, [0, n_warm], [start, lr]))
            g["momentum"] = float(np.interp(ni, [0, n_warm], [warm_momentum, momentum]))
        else:
            g["lr"], g["momentum"] = lr, momentum
    return opt.param_groups[1]["lr"]


class ModelEMA:
    """Exponential moving average of weights and buffers; the decay ramps up as
    decay * (1 - exp(-updates / tau)) so early, fast-changing weights are not averaged in."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        self.decay, self.tau, self.updates = decay, tau, updates
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])
