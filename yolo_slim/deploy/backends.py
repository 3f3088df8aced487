"""The runtimes a detector ships on, behind one interface: load a shipped file, run it, time it.

Every place that runs or times a shipped model (the export check, evaluate, the latency table,
the measured latency of a cut, REPORT.md) asks `backend(name)` instead of calling a runtime's API,
so a cut, a score or a timing is the same code path on every runtime:

  b = backend("openvino")          # or "onnxruntime" / "onnxruntime-cpu" / "ncnn"
  r = b.load("slim.xml", threads=2)  # a Runner
  outs = r(x)                      # x: float32 [B, 3, H, W] -> list of float32 arrays
  r.output_names, r.input_shape    # ["detections"] or ["raw0", ...]; (B or None, 3, H, W)
  precision(r)                     # what the runtime computed in: r.precision, else "f32"

A backend module (deploy/openvino_backend.py, deploy/ncnn_backend.py) provides:
  NAME, SUFFIX (".xml", ".param": the file evaluate/detect recognise), available() -> str | None
  (None when its package imports, else the one-line reason), version() -> str,
  load(path, threads) -> Runner, conv_runner(spec, cin, cout, threads) -> Runner (the one-conv
  model the latency table times, spec as analysis/latency.conv_specs gives it), and
  export(model, out_path, opts) -> dict (the checked export: refuses a file that does not compute
  what PyTorch computes; opts: deploy/export.ExportOptions). The report it returns carries at
  least max_abs_delta, max_rel_delta (the runtime's outputs vs PyTorch's), check_batch, outputs.
INT8 exports live in their own modules (INT8 below: deploy/quantize.py for onnxruntime,
deploy/openvino_int8.py), each with export_int8(model, out_path, export_opts, calib_data, qopts)
-> dict (the report of deploy/quantize.py: parity with FP32, refusal under min_match); export.py
--int8 takes the formats listed there. A Runner may carry `precision` ("f32", "bf16": what
the runtime was left to compute in; a runner without it computes in f32), and a runner whose
outputs are a runtime's raw-maps variant (raw0, raw1, ... in its own layout) carries
decode(outs) -> torch [B, N, 5+nc] detections (else raw maps are ONNX --raw's, decoded by the
cfg's heads). A shipped model is the files `shipped_files(path)`: the module's files(path) where
it has one, else the file and, for .xml / .param, the <stem>.bin its weights are in.
Backends are imported lazily: onnxruntime is the only runtime every install has.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Protocol, Sequence

import numpy as np

from yolo_slim.core.errors import YoloSlimError

# name -> module; "onnxruntime" is onnxruntime on the CPU (the default everywhere)
MODULES = {"onnxruntime": "yolo_slim.deploy.ort_backend",
           "openvino": "yolo_slim.deploy.openvino_backend",
           "ncnn": "yolo_slim.deploy.ncnn_backend"}
ALIASES = {"onnxruntime-cpu": "onnxruntime"}
NAMES = tuple(MODULES) + tuple(ALIASES)
# export.py --format -> the runtime that runs (and checks) that file
FORMATS = {"onnx": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn"}
# runtime -> the module whose export_int8 writes its INT8 file
INT8 = {"onnxruntime": "yolo_slim.deploy.quantize", "openvino": "yolo_slim.deploy.openvino_int8"}


class Runner(Protocol):
    output_names: list[str]
    input_shape: tuple[int | None, int, int, int]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]: ...


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def backend(name: str) -> Any:
    """The backend module of a runtime name, or a one-line error naming what is missing."""
    key = canonical(name)
    if key not in MODULES:
        raise YoloSlimError(f"--runtime must be one of {', '.join(NAMES)}, got {name}")
    mod = importlib.import_module(MODULES[key])
    why = mod.available()
    if why:
        raise YoloSlimError(f"--runtime {name}: {why}")
    return mod


def backend_for_file(path: str) -> Any:
    """The backend whose shipped files end like `path` (.onnx, .xml, .param)."""
    for key, modname in MODULES.items():
        if path.endswith(importlib.import_module(modname).SUFFIX):
            return backend(key)
    raise YoloSlimError(f"{path}: not a shipped model this tool runs (expected "
                        f"{', '.join(importlib.import_module(m).SUFFIX for m in MODULES.values())})")


def suffixes() -> Sequence[str]:
    return [importlib.import_module(m).SUFFIX for m in MODULES.values()]


def shipped_files(path: str) -> list[str]:
    """The files a shipped model is (see the module docstring)."""
    for modname in MODULES.values():
        mod = importlib.import_module(modname)
        if path.endswith(mod.SUFFIX) and hasattr(mod, "files"):
            return list(mod.files(path))
    stem, ext = os.path.splitext(path)
    return [path] + ([stem + ".bin"] if ext in (".xml", ".param") else [])


def precision(runner: Runner) -> str:
    return getattr(runner, "precision", "f32")


def int8_export(name: str) -> Any:
    """export_int8 of runtime `name` (checked available), or a one-line error."""
    key = canonical(name)
    if key not in INT8:
        raise YoloSlimError(f"--int8: INT8 export exists for {', '.join(INT8)}, not {name}")
    backend(key)
    return importlib.import_module(INT8[key]).export_int8
