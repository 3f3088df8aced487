"""Darknet activations: name -> (module factory, plain function). The function form is what
folding uses to compute the constant act(β) a cut channel emits."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Tensor], torch.Tensor]]] = {
    "leaky": (lambda: nn.LeakyReLU(0.1), lambda t: F.leaky_relu(t, 0.1)),
    "linear": (nn.Identity, lambda t: t),
    "mish": (nn.Mish, F.mish),
    "swish": (nn.SiLU, F.silu),
    "relu": (nn.ReLU, F.relu),
    "logistic": (nn.Sigmoid, torch.sigmoid),
    "tanh": (nn.Tanh, torch.tanh),
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return ACTIVATIONS[name][1]


def activation_module(name: str) -> nn.Module:
    return ACTIVATIONS[name][0]()
