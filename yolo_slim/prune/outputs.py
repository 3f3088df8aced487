"""What every pruning run writes, and how it checks what it wrote: shared by channel pruning
(channels.py), layer pruning (layer_run.py) and the unstructured baseline (unstructured.py).

One output dir holds exactly one model (`<stem>.cfg` + `<stem>.weights`), never over its input;
the written cfg + weights are read back as a fresh user would and must reproduce the model bit
for bit; the report is JSON with inf/nan written as strings.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch

from yolo_slim.darknet.cfg import net_channels, parse_cfg, save_cfg
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.core.paths import ensure_dir, guard_outputs
from yolo_slim.nn.model import Darknet


def max_abs(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest |a - b| over paired tensors (e.g. the raw head maps of two models). A NaN or inf
    in either is an error naming the head: max() would silently drop a NaN."""
    for k, (x, y) in enumerate(zip(a, b)):
        for which, t in (("first", x), ("second", y)):
            if not torch.isfinite(t).all():
                raise YoloSlimError(f"verification: output {k} (YOLO head {k}) of the {which} "
                                    f"model holds {int((~torch.isfinite(t)).sum())} non-finite "
                                    "values; the weights or the cfg make the model overflow")
    return float(max((x - y).abs().max() for x, y in zip(a, b)))


# every file a pruning run may write into its output dir, besides <stem>.cfg/.weights/.pt
RUN_FILES = ("prune_report.json", "channels.png", "gamma_hist.png", "layers.png", "latency.png",
             "args.json")


def output_stem(cfg: str | None, weights: str) -> str:
    """The name a pruning run gives its model files: the cfg's (else the weights') stem."""
    return os.path.splitext(os.path.basename(cfg or weights))[0]


def output_files(out_dir: str, stem: str) -> list[str]:
    """Every path a pruning run with this stem may write in out_dir."""
    return [os.path.join(out_dir, f"{stem}.{k}") for k in ("cfg", "weights", "pt")] + \
        [os.path.join(out_dir, f) for f in RUN_FILES]


def check_output_dir(out_dir: str, stem: str, inputs: list[str | None] | dict) -> None:
    """Create `out_dir`; refuse one that holds another model's .cfg/.weights, or where any file
    the run writes (output_files) would overwrite one of the `inputs` (core.paths.guard_outputs;
    a list, or {flag: path})."""
    ins = inputs if isinstance(inputs, dict) else {"": [p for p in inputs if p]}
    guard_outputs(ins, {"--output-dir": output_files(out_dir, stem)})
    ensure_dir(out_dir)
    ours = {f"{stem}.cfg", f"{stem}.weights"}
    other = [f for f in os.listdir(out_dir) if f.endswith((".cfg", ".weights")) and f not in ours]
    if other:
        raise YoloSlimError(f"--output-dir {out_dir} already holds {other[0]}; use an empty "
                            "directory (it must hold exactly one .cfg and one .weights)")


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
    from yolo_slim.nn.weights import load_darknet_weights, save_checkpoint, save_darknet_weights
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("cfg", "weights", "pt")}
    save_cfg(model.module_defs, paths["cfg"])
    save_darknet_weights(model, paths["weights"])
    save_checkpoint(model, paths["pt"], prune_manifest=json.dumps(manifest, default=json_default))
    back = Darknet(parse_cfg(paths["cfg"], warn=False)).eval()  # its warnings were the input's
    load_darknet_weights(back, paths["weights"])
    x = torch.rand(1, net_channels(back.module_defs), *hw, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        d = max_abs(back.forward_raw(x), model.eval().forward_raw(x))
    return {k: os.path.basename(p) for k, p in paths.items()}, d
