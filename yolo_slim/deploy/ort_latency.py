"""Timers for the latency table (analysis/latency.py) and the measured latency of a pruning
run's models, on any runtime of deploy/backends.py (onnxruntime, OpenVINO, ncnn) or onnxruntime
on a GPU (deploy/runtime.RUNTIMES).

`ConvTimer` times a one-conv graph (`conv_graph`, built with onnx.helper: Conv with bias, as
export leaves a conv after folding BN, then the activation as export writes it; random
weights) at the table's input map and batch, on the chosen runtime and threads: the median (or
fastest) of `runs` calls after `warmup`. onnxruntime runs the ONNX bytes; another backend runs
them as its `conv_runner` reads them. `empty_ms` times a graph that does nothing: the per-call
overhead subtracted from every conv timing (onnxruntime: an Identity graph; other runtimes,
whose converters may drop an Identity: a 1x1 conv of one channel on a 1x1 map).
`models_latency` exports models to the runtime's format (`exported`) and times them
interleaved in one run (deploy/ort_bench.py), so load from other processes hits all alike.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Callable, Iterator

import numpy as np

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.deploy.backends import backend, canonical, precision
from yolo_slim.deploy.runtime import RUNTIMES, median_ms, ort_session


def _act_nodes(act: str, x: str, y: str) -> list:
    from onnx import helper
    if act == "linear":
        return [helper.make_node("Identity", [x], [y])]
    if act == "leaky":
        return [helper.make_node("LeakyRelu", [x], [y], alpha=0.1)]
    if act == "swish":
        return [helper.make_node("Sigmoid", [x], [x + "_s"]), helper.make_node("Mul", [x, x + "_s"], [y])]
    op = {"relu": "Relu", "logistic": "Sigmoid", "tanh": "Tanh", "mish": "Mish"}[act]
    return [helper.make_node(op, [x], [y])]


def conv_graph(spec: dict[str, Any], cin: int, cout: int) -> bytes:
    """A one-conv ONNX model: images [B, cin, H, W] -> conv (+bias) -> activation."""
    from onnx import TensorProto, helper, numpy_helper
    k, g = spec["size"], spec["groups"]
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // g, k, k)) * 0.01).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
    p, d = spec["padding"] * spec["dilation"], spec["dilation"]
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], group=g,
                            strides=[spec["stride_y"], spec["stride_x"]], pads=[p, p, p, p],
                            dilations=[d, d])
    h, wd = spec["in_hw"]
    oh, ow = ((n + 2 * p - d * (k - 1) - 1) // st + 1 for n, st in ((h, spec["stride_y"]), (wd, spec["stride_x"])))
    graph = helper.make_graph([conv] + _act_nodes(spec["act"], "c", "y"), "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [spec["batch"], cin, h, wd])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [spec["batch"], cout, oh, ow])],
                              [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


# median: what a run costs on this machine as it is; min: what it costs when it gets the cores
# (on a machine shared with other jobs the median moves with their load, the minimum much less)
STATS = ("median", "min")


# the least a runtime can be asked to run: what a call costs beyond its arithmetic
EMPTY_SPEC = {"size": 1, "stride_y": 1, "stride_x": 1, "padding": 0, "groups": 1, "dilation": 1,
              "in_hw": [1, 1], "act": "linear", "batch": 1}


def is_ort(runtime: str) -> bool:
    return runtime in RUNTIMES or canonical(runtime) == "onnxruntime"


class ConvTimer:
    """timer(spec, cin, cout) -> ms for analysis.latency.measure_table on `runtime`."""

    def __init__(self, runtime: str = "onnxruntime-cpu", threads: int | None = None, runs: int = 7,
                 warmup: int = 2, stat: str = "median"):
        if stat not in STATS:
            raise YoloSlimError(f"--stat must be one of {', '.join(STATS)}, got {stat}")
        self.runtime, self.threads, self.runs, self.warmup, self.stat = runtime, threads, runs, warmup, stat
        # onnxruntime keeps its own sessions (GPU providers are not backends); others: checked now
        self.backend = None if is_ort(runtime) else backend(runtime)
        self.precision = "f32"  # what the runtime computed the last conv in (OpenVINO may say)

    def _session(self, model: bytes) -> Callable[[np.ndarray], Any]:
        s = ort_session(model, self.threads, runtime=self.runtime if self.runtime in RUNTIMES
                        else "onnxruntime-cpu")
        name = s.get_inputs()[0].name
        return lambda x: s.run(None, {name: x})

    def _time(self, run: Callable[[np.ndarray], Any], shape: tuple[int, ...]) -> float:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        if self.stat == "median":
            return median_ms(lambda: run(x), self.runs, self.warmup)
        return min(median_ms(lambda: run(x), 1, self.warmup if k == 0 else 0)
                   for k in range(self.runs))

    def __call__(self, spec: dict[str, Any], cin: int, cout: int) -> float:
        if self.backend is None:
            run = self._session(conv_graph(spec, cin, cout))
        else:
            run = self.backend.conv_runner(spec, cin, cout, self.threads)
            self.precision = precision(run)
        return self._time(run, (spec["batch"], cin, *spec["in_hw"]))

    def empty_ms(self, shape: tuple[int, ...] = (1, 3, 32, 32)) -> float:
        from onnx import TensorProto, helper
        if self.backend is not None:
            return self._time(self.backend.conv_runner(EMPTY_SPEC, 1, 1, self.threads), (1, 1, 1, 1))
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
        return self._time(self._session(m), shape)


OrtConvTimer = ConvTimer  # its name from when onnxruntime was the only runtime


def models_latency(models: dict[str, Any], img_hw: tuple[int, int], batch: int = 1,
                   threads: int | None = None, rounds: int = 30, warmup: int = 3,
                   ref: str | None = None, runtime: str = "onnxruntime-cpu") -> dict[str, dict[str, float]]:
    """Export each Darknet model to a temp file of `runtime`'s format (checked as every export
    is) and time them interleaved there: {name: {median_ms, p25_ms, p75_ms, min_ms,
    ratio_median}} (ort_bench.py)."""
    from yolo_slim.deploy.ort_bench import interleaved_latency
    with exported(models, img_hw, batch, runtime) as paths:
        return interleaved_latency(paths, img_hw, batch, rounds, warmup, threads, ref, runtime)


@contextlib.contextmanager
def exported(models: dict[str, Any], img_hw: tuple[int, int], batch: int = 1,
             runtime: str = "onnxruntime-cpu") -> Iterator[dict[str, str]]:
    """{name: path} of each Darknet model exported to a temp file for `runtime` (onnxruntime on
    a GPU: ONNX) with export.py's defaults (decoded boxes, no NMS), so it times like a shipped
    FP32 file; removed on exit."""
    from yolo_slim.deploy.export import ExportOptions
    b = backend("onnxruntime" if is_ort(runtime) else runtime)
    opts = ExportOptions(img_size=list(img_hw), batch_size=batch, check_batch=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for k, m in models.items():
            paths[k] = os.path.join(tmp, f"{k}{b.SUFFIX}")
            b.export(m, paths[k], opts)
        yield paths


def exported_onnx(models: dict[str, Any], img_hw: tuple[int, int],
                  batch: int = 1) -> contextlib.AbstractContextManager[dict[str, str]]:
    return exported(models, img_hw, batch, "onnxruntime")
