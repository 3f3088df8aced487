"""A training that diverges stops at the step it happens, with one line naming the epoch, the
step and the loss term or the tensor, before anything is saved: the last good last.pt/best.pt
stay (nn/weights refuses to write a non-finite tensor anyway).

Both checks run every step: a loss can stay finite (1e30) while the weights overflow (with
`--lr0 1e6` BN running_var reaches inf first), and a step that produced a NaN would be averaged
into the EMA and saved at the epoch's end. The weights check is one float64 sum per tensor (a
float32 value cannot overflow it, so the sum is finite exactly when every value is) and one
device sync; a skipped step (AMP found inf gradients) changed nothing and is not checked.
"""
from __future__ import annotations

import math
import os

import torch

from yolo_slim.core import device as dv
from yolo_slim.core.errors import YoloSlimError


def kept(last: str) -> str:
    return last if os.path.isfile(last) else "nowhere yet (no epoch finished)"


def check_loss(loss: torch.Tensor, logs: dict[str, float], world: int, epoch: int, step: int,
               last: str) -> None:
    """Stop on a non-finite loss, naming its first non-finite term."""
    if dv.all_finite(loss.detach(), world):
        return
    bad = [k for k, v in logs.items() if not math.isfinite(v)]
    terms = ", ".join(f"{k}={v:.4g}" for k, v in logs.items())
    raise YoloSlimError(f"non-finite loss at epoch {epoch} step {step}"
                        f"{' in ' + bad[0] if bad else ''} ({terms}); last good checkpoint "
                        f"kept at {kept(last)}")


def check_weights(model: torch.nn.Module, epoch: int, step: int, last: str) -> None:
    """Stop on a NaN or inf in any parameter or buffer, naming the conv layer and tensor."""
    ts = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not ts or math.isfinite(float(torch.stack([t.detach().sum(dtype=torch.float64) for t in ts]).sum())):
        return
    from yolo_slim.nn.weights import check_finite
    where = f"non-finite weights at epoch {epoch} step {step}"
    verdict = f"the training diverged; last good checkpoint kept at {kept(last)}"
    try:
        check_finite(model, where, verdict=verdict)
    except YoloSlimError:
        raise
    except Exception:  # not a Darknet (a hook's own module): name the tensor by its key
        pass
    name = next(k for k, t in (*model.named_parameters(), *model.named_buffers())
                if t.is_floating_point() and not torch.isfinite(t).all())
    raise YoloSlimError(f"{where}: {name} holds NaN or inf; {verdict}")
