"""onnxruntime timers for the latency table (analysis/latency.py) and the measured latency of a
pruning run's models.

`OrtConvTimer` times a one-conv ONNX graph built with onnx.helper (Conv with bias, as export
leaves a conv after folding BN, then the activation as export writes it), random weights, at
the table's input map and batch, on the chosen runtime and threads: the median of `runs` calls
after `warmup`. `empty_ms` is the same for a graph that does nothing (Identity): the per-call
overhead subtracted from every conv timing. `models_latency` exports models (`exported_onnx`)
and times them interleaved in one run (deploy/ort_bench.py), so load from other processes hits
all alike.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Iterator

import numpy as np

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.deploy.runtime import median_ms, ort_session


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


class OrtConvTimer:
    """timer(spec, cin, cout) -> ms for analysis.latency.measure_table."""

    def __init__(self, runtime: str = "onnxruntime-cpu", threads: int | None = None, runs: int = 7,
                 warmup: int = 2, stat: str = "median"):
        if stat not in STATS:
            raise YoloSlimError(f"--stat must be one of {', '.join(STATS)}, got {stat}")
        self.runtime, self.threads, self.runs, self.warmup, self.stat = runtime, threads, runs, warmup, stat

    def _time(self, model: bytes, shape: tuple[int, ...]) -> float:
        s = ort_session(model, self.threads, runtime=self.runtime)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        name = s.get_inputs()[0].name
        if self.stat == "median":
            return median_ms(lambda: s.run(None, {name: x}), self.runs, self.warmup)
        return min(median_ms(lambda: s.run(None, {name: x}), 1, self.warmup if k == 0 else 0)
                   for k in range(self.runs))

    def __call__(self, spec: dict[str, Any], cin: int, cout: int) -> float:
        return self._time(conv_graph(spec, cin, cout), (spec["batch"], cin, *spec["in_hw"]))

    def empty_ms(self, shape: tuple[int, ...] = (1, 3, 32, 32)) -> float:
        from onnx import TensorProto, helper
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
        return self._time(m, shape)


def models_latency(models: dict[str, Any], img_hw: tuple[int, int], batch: int = 1,
                   threads: int | None = None, rounds: int = 30, warmup: int = 3,
                   ref: str | None = None) -> dict[str, dict[str, float]]:
    """Export each Darknet model to a temp ONNX file (checked as every export is) and time them
    interleaved: {name: {median_ms, p25_ms, p75_ms, min_ms, ratio_median}} (ort_bench.py)."""
    from yolo_slim.deploy.ort_bench import interleaved_latency
    with exported_onnx(models, img_hw, batch) as paths:
        return interleaved_latency(paths, img_hw, batch, rounds, warmup, threads, ref)


@contextlib.contextmanager
def exported_onnx(models: dict[str, Any], img_hw: tuple[int, int],
                  batch: int = 1) -> Iterator[dict[str, str]]:
    """{name: path} of each Darknet model exported to a temp ONNX file with export.py's defaults
    (decoded boxes, no NMS, opset 18), so it times like a shipped FP32 file; removed on exit."""
    from yolo_slim.deploy.export import export_onnx
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for k, m in models.items():
            paths[k] = os.path.join(tmp, f"{k}.onnx")
            export_onnx(m, paths[k], img_size=list(img_hw), batch_size=batch, check_batch=1)
        yield paths
