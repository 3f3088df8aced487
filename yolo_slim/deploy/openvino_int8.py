"""INT8 for OpenVINO: NNCF post-training quantization of the checked FP32 IR, from the same
calibration images as the ONNX INT8 export, with the same parity report and refusal.

    export_int8(model, "y.int8.xml", ExportOptions(img_size=416), "my.data", QuantOptions())

Steps, in a temp folder beside the output; the files move there only after the last check:

1. the FP32 export of openvino_backend (ONNX checked in onnxruntime, IR checked in OpenVINO);
2. the ONNX file with darknet's -inf maxpool padding made edge padding (graph_edit: exact; a
   -inf that reached a range statistic would make every scale downstream infinite. NNCF puts
   its FakeQuantize before the Pad + MaxPool, so it sees none today: this keeps it so), converted;
3. the decode tail found in the OpenVINO graph as graph_edit.decode_tail finds it in ONNX: walk
   back from every output and stop at the convolutions; the nodes passed on the way go to
   nncf.IgnoredScope, so no FakeQuantize sits on a head conv's output or after it and the decode
   runs in float on float logits. The quantized graph is checked for it;
4. nncf.quantize (preset performance: symmetric 8-bit activations, int8 weights per output
   channel, or per tensor; fast bias correction) on ``calib_images`` images of the .data file's
   ``calib_split`` list, letterboxed as evaluation (deploy/calib.py). ``calib_method``: minmax ->
   NNCF's MINMAX (the extremes over all images, as onnxruntime's MinMax); percentile -> the
   ``percentile`` quantile per image, averaged; entropy -> NNCF's histogram estimator (it
   minimises the quantization error; NNCF has no KL-entropy calibration);
5. parity: INT8 vs FP32 IR, both compiled in OpenVINO with f32 for what is not quantized, on
   the calibration images (quantize.compare_detections); fewer than ``min_match`` of the FP32
   detections found again is an error and nothing is written.
The report goes to <out>.quant.json, as quantize.py writes it.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any

import onnx

from yolo_slim.core.errors import WriteError, YoloSlimError, write_error
from yolo_slim.deploy import graph_edit, openvino_backend as ovb
from yolo_slim.deploy.quantize import QuantOptions, int8_setup, parity_runs, refuse_low_match, write_report

HEAD_OPS = {"Convolution", "GroupConvolution"}
NOT_QUANTIZED = {"Constant", "Parameter", "Result"}  # no FakeQuantize goes on these anyway
SHAPE_ONLY = {"ShapeOf"}  # reads only a shape: the walk stops there (as graph_edit.SHAPE_ONLY)


def decode_tail(ov_model: Any) -> tuple[list[str], list[str]]:
    """(tail node names, head convolution names) of an openvino.Model: the nodes on the way
    back from each output to the first convolutions. An output no convolution feeds is an error."""
    tail: dict[str, None] = {}
    heads: dict[str, None] = {}
    for res in ov_model.get_results():
        found, stack, seen = False, [res], set()
        while stack:
            n = stack.pop()
            name, kind = n.get_friendly_name(), n.get_type_name()
            if name in seen:
                continue
            seen.add(name)
            if kind in HEAD_OPS:
                heads[name], found = None, True
                continue
            if kind not in NOT_QUANTIZED:
                tail[name] = None
            if kind not in SHAPE_ONLY:
                stack += [n.input_value(i).get_node() for i in range(n.get_input_size())]
        if not found:
            raise YoloSlimError(f"INT8: no convolution feeds the output "
                                f"{res.get_friendly_name()!r}: not a detector graph")
    return list(tail), list(heads)


def quantized_tail_inputs(ov_model: Any, tail: list[str]) -> int:
    """How many tail nodes read a FakeQuantize output (0 when the decode runs in float)."""
    names, n = set(tail), 0
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            n += sum(t.get_node().get_friendly_name() in names
                     for t in op.output(0).get_target_inputs())
    return n


def nncf_parameters(opts: QuantOptions) -> Any:
    """AdvancedQuantizationParameters for --calib-method and --per-tensor."""
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                        QuantizationParameters)
    from nncf.quantization.range_estimator import (AggregatorType, RangeEstimatorParameters,
                                                   RangeEstimatorParametersSet,
                                                   StatisticsCollectorParameters, StatisticsType)
    if opts.calib_method == "percentile":
        side = StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MEAN,
                                             quantile_outlier_prob=1 - opts.percentile / 100)
        ranges = RangeEstimatorParameters(min=side, max=side)
    else:
        ranges = {"minmax": RangeEstimatorParametersSet.MINMAX,
                  "entropy": RangeEstimatorParametersSet.HISTOGRAM}[opts.calib_method]
    weights = None if opts.per_channel else QuantizationParameters(per_channel=False)
    return AdvancedQuantizationParameters(activations_range_estimator_params=ranges,
                                          weights_quantization_params=weights)


def quantize_ir(ov_model: Any, images: Any, opts: QuantOptions) -> tuple[Any, list[str], list[str]]:
    """(INT8 openvino.Model, tail, heads): nncf.quantize with the decode tail left out."""
    import nncf
    tail, heads = decode_tail(ov_model)
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every node it skips
    scope = nncf.IgnoredScope(names=tail if opts.keep_tail_float else [], validate=False)
    try:
        q = nncf.quantize(ov_model, nncf.Dataset(list(images)), subset_size=max(1, len(images)),
                          ignored_scope=scope, advanced_parameters=nncf_parameters(opts))
    except Exception as e:  # nncf raises its own types on graphs it cannot handle
        raise YoloSlimError(f"INT8: NNCF quantization failed: {ovb.first_line(e)}") from None
    if opts.keep_tail_float and quantized_tail_inputs(q, tail):
        raise YoloSlimError("INT8: NNCF quantized an input of the box-decode tail; not written")
    return q, tail, heads


def _ir_bytes(xml: str) -> int:
    return os.path.getsize(xml) + os.path.getsize(os.path.splitext(xml)[0] + ".bin")


def export_int8(model: Any, out_path: str, export_opts: Any, calib_data: str,
                qopts: QuantOptions) -> dict[str, Any]:
    """The FP32 IR of `model` (checked), quantized by NNCF with calibration images of
    `calib_data`, parity-checked against FP32, written to out_path (.xml + .bin) and
    <out>.quant.json."""
    import nncf
    model, eo, out_dir = ovb.resolve(model, out_path, export_opts)
    eo, images, decode = int8_setup(model, eo, calib_data, qopts)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ov-int8-") as tmp:
            onnx_path, fp32_xml, fp32 = ovb.export_checked(model, tmp, eo)
            m = onnx.load(onnx_path)
            n_pads = graph_edit.edge_pad_maxpools(m)
            edged = os.path.join(tmp, "edge.onnx")
            onnx.save(m, edged)
            f32_runner = ovb.OvRunner(fp32_xml, where="the FP32 IR")
            images.batch = f32_runner.input_shape[0] or 1  # a --static IR takes its own batch
            q, tail, heads = quantize_ir(ovb.convert(edged), images, qopts)
            calib_s = time.perf_counter() - t0
            q_xml = os.path.join(tmp, "int8.xml")
            ovb.save_ir(q, q_xml)
            parity = parity_runs(f32_runner, ovb.OvRunner(q_xml, where="the INT8 IR"), images,
                                 decode, qopts)
            refuse_low_match(parity, qopts)
            sizes = (_ir_bytes(fp32_xml), _ir_bytes(q_xml))
            ovb.move_ir(q_xml, out_path)
    except (OSError, WriteError) as e:  # a full disk in the temp folder: name the user's file
        raise write_error(out_path, e) from None
    ops = {n.get_friendly_name(): n.get_type_name() for n in q.get_ordered_ops()}
    report = {"calib": images.summary(), "calib_images": images.used,
              "calib_seconds": round(calib_s, 1), "options": asdict(qopts), "tail_nodes": len(tail),
              "tail_ops": sorted({ops[n] for n in tail if n in ops}), "head_convs": heads,
              "fake_quantize": sum(v == "FakeQuantize" for v in ops.values()),
              "edge_padded_maxpools": n_pads, "parity": parity, "fp32_bytes": sizes[0],
              "int8_bytes": sizes[1], "path": out_path, "runtime": "openvino",
              "fp32_check": {k: fp32[k] for k in ("max_abs_delta", "max_rel_delta")},
              "onnx_check": fp32["onnx_check"], "precision": fp32["precision"],
              "outputs": fp32["outputs"], "img_hw": list(fp32["img_hw"]),
              "openvino": ovb.version(), "nncf": nncf.__version__}
    write_report(out_path, report)
    return report
