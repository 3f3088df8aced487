"""What every pruning run writes, and how it checks what it wrote: shared by channel pruning
(channels.py), layer pruning (layer_run.py) and the unstructured baseline (unstructured.py).

One output dir holds exactly one model (`<stem>.cfg` + `<stem>.weights`), never over its input;
the written cfg + weights are read back as a fresh user would and must reproduce the model bit
for bit; the report is JSON with inf/nan written as strings.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

import numpy as np
import torch

from yolo_slim.darknet.cfg import net_channels, parse_cfg, save_cfg
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.nn.model import Darknet


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def max_abs(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest |a - b| over paired tensors (e.g. the raw head maps of two models)."""
    return float(max((x - y).abs().max() for x, y in zip(a, b)))


def check_output_dir(out_dir: str, stem: str, inputs: list[str | None]) -> None:
    """Create `out_dir`; refuse one that holds another model's .cfg/.weights, or where writing
    `<stem>.cfg`/`<stem>.weights` would overwrite one of the `inputs`."""
    os.makedirs(out_dir, exist_ok=True)
    ours = {f"{stem}.cfg", f"{stem}.weights"}
    other = [f for f in os.listdir(out_dir) if f.endswith((".cfg", ".weights")) and f not in ours]
    if other:
        raise YoloSlimError(f"--output-dir {out_dir} already holds {other[0]}; use an empty "
                            "directory (it must hold exactly one .cfg and one .weights)")
    for p in inputs:
        for name in ours:
            if p and os.path.exists(os.path.join(out_dir, name)) and \
                    os.path.samefile(p, os.path.join(out_dir, name)):
                raise YoloSlimError(f"--output-dir would overwrite the input {p}")


def finite(o: Any) -> Any:
    """inf/nan are not JSON: write them as strings ("inf" = e.g. a threshold that cuts all)."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))


def write_report(rep: dict[str, Any], path: str) -> None:
    atomic_write_bytes(path, json.dumps(finite(rep), indent=1, default=json_default).encode())


def write_model_files(model: Darknet, out_dir: str, stem: str, manifest: dict[str, Any],
                      hw: tuple[int, int], seed: int) -> tuple[dict[str, str], float]:
    """Write `<stem>.cfg/.weights/.pt`; read cfg + weights back as a fresh user would and return
    (file names, max |Δ| of the raw head maps on one seeded input; must be 0)."""
    from yolo_slim.darknet.weights import load_darknet_weights, save_checkpoint, save_darknet_weights
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("cfg", "weights", "pt")}
    save_cfg(model.module_defs, paths["cfg"])
    save_darknet_weights(model, paths["weights"])
    save_checkpoint(model, paths["pt"], prune_manifest=json.dumps(manifest, default=json_default))
    back = Darknet(parse_cfg(paths["cfg"])).eval()
    load_darknet_weights(back, paths["weights"])
    x = torch.rand(1, net_channels(back.module_defs), *hw, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        d = max_abs(back.forward_raw(x), model.eval().forward_raw(x))
    return {k: os.path.basename(p) for k, p in paths.items()}, d
