"""onnxruntime (CPU) behind deploy/backends.py's interface: the reference runtime every install has."""
from __future__ import annotations

from typing import Any

import numpy as np

from yolo_slim.core.errors import YoloSlimError, require_file
from yolo_slim.deploy.runtime import ort_session

NAME, SUFFIX = "onnxruntime", ".onnx"
NARROW = False  # NCHWc pads a narrow map to its block inside the network (analysis/latency.grid_points)


def available() -> str | None:
    return None  # a dependency of the package


def version() -> str:
    import onnxruntime
    return onnxruntime.__version__


class OrtRunner:
    """A session of one ONNX file (or serialized model); call it on a float32 NCHW batch."""

    def __init__(self, model: str | bytes, threads: int | None = None, stop_spinning: bool = True):
        if isinstance(model, str):
            require_file(model, "ONNX model")
        try:
            self.session = ort_session(model, threads, stop_spinning=stop_spinning)
        except YoloSlimError:
            raise
        except Exception as e:  # onnxruntime raises its own types for unreadable models
            where = model if isinstance(model, str) else "model"
            raise YoloSlimError(f"{where}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        s = inp.shape
        self.input_shape = tuple(v if isinstance(v, int) and v > 0 else None for v in s)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})


def load(path: str, threads: int | None = None) -> OrtRunner:
    return OrtRunner(path, threads)


def conv_runner(spec: dict[str, Any], cin: int, cout: int, threads: int | None = None) -> OrtRunner:
    from yolo_slim.deploy.ort_latency import conv_graph
    return OrtRunner(conv_graph(spec, cin, cout), threads, stop_spinning=False)


def export(model: Any, out_path: str, opts: Any) -> dict[str, Any]:
    from yolo_slim.deploy.export import export_onnx
    return export_onnx(model, out_path, opts)
