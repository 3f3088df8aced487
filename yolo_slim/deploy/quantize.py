"""INT8 export: onnxruntime static post-training quantization of a checked FP32 ONNX detector.

    export_int8(model, "y.int8.onnx", ExportOptions(img_size=416), "my.data", QuantOptions())

Steps, each on a temp file that is renamed to the output only after the last check passes:

1. the FP32 export of deploy/export.py (checked against torch as always);
2. onnxruntime's pre-processing (constant folding), then the graph edits of graph_edit.py: -inf
   maxpool padding -> edge padding (exact), and the decode tail found by walking back from the
   outputs to the head convs;
3. ``quantize_static``: QDQ format, uint8 activations, int8 per-channel weights (per-tensor with
   ``per_channel=False``), ranges from ``calib_images`` images of the .data file's ``calib_split``
   list (letterboxed like evaluation) by ``minmax``, ``entropy`` or ``percentile``; the tail
   nodes are excluded and the head convs' outputs left in float, so the decode runs in float;
4. parity, like the FP32 check but measured, not exact: INT8 vs FP32 onnxruntime on the same
   calibration images (compare_detections). Fewer than ``min_match`` of the FP32 detections
   found again is an error (an INT8 model that "detects nothing" is never written).

``uint8`` activations with ``int8`` weights (U8S8) is onnxruntime's fast path on x86. On CPUs
without VNNI it multiplies with VPMADDUBSW, which can saturate; the parity numbers show it.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch

from yolo_slim.core.errors import WriteError, YoloSlimError, atomic_write_bytes, write_error
from yolo_slim.deploy import graph_edit
from yolo_slim.deploy.calib import CalibrationImages
from yolo_slim.deploy.export import ExportOptions, export_onnx, resolve_options
from yolo_slim.deploy.runtime import ort_session

CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class QuantOptions:
    calib_method: str = "minmax"
    calib_images: int = 100
    calib_split: str = "train"
    per_channel: bool = True
    percentile: float = 99.999  # with calib_method="percentile"
    float_head: bool = True  # head conv outputs in float (False: 8-bit logits into the tail)
    keep_tail_float: bool = True  # False only to show what quantizing the decode does
    parity_conf: float = 0.25  # detections compared above this score (obj x cls)
    parity_iou: float = 0.5  # an INT8 box of the same class with this IoU "finds" a FP32 one
    min_match: float = 0.5  # fewer FP32 detections found again -> error (0 disables)

    def validate(self) -> None:
        if self.calib_method not in CALIB_METHODS:
            raise YoloSlimError(f"--calib-method {self.calib_method}: use one of {', '.join(CALIB_METHODS)}")
        if self.calib_split not in ("train", "valid"):
            raise YoloSlimError(f"--calib-split {self.calib_split}: use train or valid")
        if self.calib_images < 1:
            raise YoloSlimError(f"--calib-images {self.calib_images}: must be at least 1")
        if not 0 < self.percentile <= 100:
            raise YoloSlimError(f"--percentile {self.percentile}: must be in (0, 100]")


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def compare_detections(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], conf: float = 0.25,
                       iou: float = 0.5, nms_iou: float = 0.45) -> dict[str, Any]:
    """Decoded outputs [B, N, 5+nc] of a reference (FP32) and a candidate (INT8) model, batch by
    batch -> how far apart they are: per-anchor score and box deltas, and after NMS at `conf`
    the share of reference detections the candidate finds again (same class, IoU >= `iou`)."""
    from yolo_slim.eval.evaluate import non_max_suppression
    n_ref = n_got = matched = 0
    ious, dscore, dbox, dsc_all = [], [], [], []
    for r, g in zip(ref, got):
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        s_r, s_g = r64[..., 4:5] * r64[..., 5:], g64[..., 4:5] * g64[..., 5:]
        dsc_all.append(np.abs(s_r - s_g).max(-1).ravel())
        conf_anchor = r64[..., 4] > conf
        if conf_anchor.any():
            dbox.append(np.abs(r64[..., :4] - g64[..., :4])[conf_anchor].max(-1))
        dets_r = non_max_suppression(torch.from_numpy(r), conf, nms_iou)
        dets_g = non_max_suppression(torch.from_numpy(g), conf, nms_iou)
        for dr, dg in zip(dets_r, dets_g):
            dr, dg = dr.numpy().astype(np.float64), dg.numpy().astype(np.float64)
            n_ref, n_got = n_ref + len(dr), n_got + len(dg)
            if not len(dr) or not len(dg):
                continue
            m = _box_iou(dr[:, :4], dg[:, :4]) * (dr[:, None, 5] == dg[None, :, 5])
            free = np.ones(len(dg), bool)
            for k in range(len(dr)):  # best-scored reference first (NMS order)
                cand = np.where(free, m[k], -1.0)
                j = int(cand.argmax())
                if cand[j] >= iou:
                    free[j] = False
                    matched += 1
                    ious.append(cand[j])
                    dscore.append(abs(dr[k, 4] - dg[j, 4]))
    dsc = np.concatenate(dsc_all) if dsc_all else np.zeros(1)
    db = np.concatenate(dbox) if dbox else np.zeros(0)
    return {"ref_detections": n_ref, "detections": n_got, "matched": matched,
            "match_rate": matched / n_ref if n_ref else None,
            "extra_rate": (n_got - matched) / n_got if n_got else None,
            "mean_iou": float(np.mean(ious)) if ious else None,
            "max_matched_score_delta": float(np.max(dscore)) if dscore else None,
            "score_delta_max": float(dsc.max()), "score_delta_mean": float(dsc.mean()),
            "box_delta_px_median": float(np.median(db)) if db.size else None,
            "box_delta_px_p95": float(np.percentile(db, 95)) if db.size else None,
            "conf": conf, "iou": iou}


def _calibration_reader(images: CalibrationImages, input_name: str):
    from onnxruntime.quantization import CalibrationDataReader
    from tqdm import tqdm

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(tqdm(images, desc="calibrate", total=-(-len(images) // images.batch),
                                leave=False))

        def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
            x = next(self.it, None)
            return None if x is None else {input_name: x}
    return Reader()


def _static_batch(model: onnx.ModelProto) -> int:
    d = model.graph.input[0].type.tensor_type.shape.dim[0]
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1


def quantize_onnx(fp32_path: str, out_path: str, images: CalibrationImages, opts: QuantOptions,
                  decode: Callable[[list[np.ndarray]], np.ndarray] | None = None) -> dict[str, Any]:
    """FP32 ONNX file -> INT8 QDQ file at out_path (atomically), with the parity report.
    `decode` turns the graph outputs into [B, N, 5+nc] detections (default: the single
    `detections` output); raw exports pass the model's decode."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    opts.validate()
    decode = decode or (lambda outs: outs[0])
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.calib_method]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out_path))) as tmp:
        pre, edited, q = (os.path.join(tmp, f) for f in ("pre.onnx", "edit.onnx", "q.onnx"))
        try:
            quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        except Exception as e:  # the optimisation is a nicety; the plain graph quantizes too
            print(f"quantize: onnxruntime pre-processing skipped ({type(e).__name__}: {e})")
            pre = fp32_path
        m = onnx.load(pre)
        graph_edit.name_nodes(m)
        n_pads = graph_edit.edge_pad_maxpools(m)
        graph_edit.drop_unused_initializers(m)
        try:
            tail, heads = graph_edit.decode_tail(m)
        except ValueError as e:
            raise YoloSlimError(f"INT8: {e}") from None
        onnx.save(m, edited)
        images.batch = _static_batch(m)
        reader = _calibration_reader(images, m.graph.input[0].name)
        extra = {"CalibPercentile": opts.percentile} if method == CalibrationMethod.Percentile else {}
        quantize_static(edited, q, reader, quant_format=QuantFormat.QDQ, per_channel=opts.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, extra_options=extra,
                        nodes_to_exclude=tail if opts.keep_tail_float else [])
        calib_s = time.perf_counter() - t0
        qm = onnx.load(q)
        n_float_heads = graph_edit.float_head_outputs(qm, heads) if opts.float_head else 0
        graph_edit.drop_unused_initializers(qm)
        try:
            onnx.checker.check_model(qm, full_check=True)
        except Exception as e:
            raise YoloSlimError(f"onnx.checker rejected the INT8 model: {str(e).splitlines()[0]}") from None
        onnx.save(qm, q)
        parity = parity_check(fp32_path, q, images, decode, opts)
        report = {"calib": images.summary(), "calib_images": images.used,
                  "calib_seconds": round(calib_s, 1), "options": asdict(opts),
                  "tail_nodes": len(tail), "tail_ops": sorted({n.op_type for n in m.graph.node
                                                               if n.name in set(tail)}),
                  "head_convs": heads, "float_head_outputs": n_float_heads,
                  "edge_padded_maxpools": n_pads, "parity": parity,
                  "fp32_bytes": os.path.getsize(fp32_path), "int8_bytes": os.path.getsize(q)}
        refuse_low_match(parity, opts)
        os.replace(q, out_path)
    report["path"] = out_path
    return report


def refuse_low_match(parity: dict[str, Any], opts: QuantOptions) -> None:
    rate = parity["match_rate"]
    if opts.min_match > 0 and rate is not None and rate < opts.min_match:
        raise YoloSlimError(
            f"INT8 model finds only {rate:.0%} of the FP32 model's detections on the "
            f"calibration images (< {opts.min_match:.0%}); try another --calib-method or more "
            f"--calib-images; not written")


Run = Callable[[np.ndarray], Sequence[np.ndarray]]


def parity_runs(f32: Run, i8: Run, images: CalibrationImages,
                decode: Callable[[list[np.ndarray]], np.ndarray], opts: QuantOptions) -> dict:
    """compare_detections of two runners (FP32, INT8) on the calibration images."""
    ref, got = [], []
    for x in images:
        ref.append(np.asarray(decode(list(f32(x)))))
        got.append(np.asarray(decode(list(i8(x)))))
    return compare_detections(ref, got, opts.parity_conf, opts.parity_iou)


def parity_check(fp32_path: str, int8_path: str, images: CalibrationImages,
                 decode: Callable[[list[np.ndarray]], np.ndarray], opts: QuantOptions) -> dict:
    f32, i8 = ort_session(fp32_path), ort_session(int8_path)
    name = f32.get_inputs()[0].name
    return parity_runs(lambda x: f32.run(None, {name: x}), lambda x: i8.run(None, {name: x}),
                       images, decode, opts)


def report_path(out_path: str) -> str:
    return out_path + ".quant.json"


def int8_setup(model, export_opts: ExportOptions | Any, calib_data: str, qopts: QuantOptions
               ) -> tuple[ExportOptions, CalibrationImages, Callable[[list[np.ndarray]], np.ndarray]]:
    """What every INT8 export checks and builds first: (export options, calibration images,
    decode of the graph outputs into [B, N, 5+nc] detections: the raw maps by the model's heads)."""
    eo = resolve_options(export_opts)
    if eo.nms:
        raise YoloSlimError("--int8 with --nms is not supported: quantize the detections export "
                            "and run NMS after it")
    h, w = eo.img_hw
    if h != w:
        raise YoloSlimError(f"--int8 calibrates on letterboxed square images: --img-size {h} {w} "
                            "must be square")
    qopts.validate()
    images = CalibrationImages(calib_data, h, qopts.calib_images, qopts.calib_split)

    def decode(outs: list[np.ndarray]) -> np.ndarray:
        if not eo.raw:
            return outs[0]
        with torch.no_grad():
            return model.decode([torch.from_numpy(o) for o in outs], (h, w)).numpy()
    return eo, images, decode


def write_report(out_path: str, report: dict[str, Any]) -> None:
    atomic_write_bytes(report_path(out_path), json.dumps(report, indent=1, default=str).encode())


def export_int8(model, out_path: str, export_opts: ExportOptions | Any, calib_data: str,
                qopts: QuantOptions) -> dict[str, Any]:
    """Export `model` to FP32 ONNX (checked against torch), quantize it with calibration
    images from `calib_data`, write INT8 to `out_path` and `<out>.quant.json` (the report)."""
    model = getattr(model, "module", model)
    eo = resolve_options(export_opts)
    if qopts.per_channel and eo.opset < 13:  # DequantizeLinear's axis attribute is opset 13
        raise YoloSlimError(f"--int8 with per-channel weights needs --opset 13 or newer (got "
                            f"{eo.opset}); or add --per-tensor")
    eo, images, decode = int8_setup(model, eo, calib_data, qopts)
    h, w = eo.img_hw
    out_dir = os.path.dirname(os.path.abspath(out_path))
    try:
        with tempfile.TemporaryDirectory(dir=out_dir if os.path.isdir(out_dir) else None) as tmp:
            fp32 = os.path.join(tmp, "fp32.onnx")
            fp32_report = export_onnx(model, fp32, eo)
            report = quantize_onnx(fp32, out_path, images, qopts, decode if eo.raw else None)
    except (OSError, WriteError) as e:  # a full disk in the temp folder: name the user's file
        raise write_error(out_path, e) from None
    report["fp32_check"] = {k: fp32_report[k] for k in ("max_abs_delta", "max_rel_delta")}
    report.update(outputs=fp32_report["outputs"], img_hw=[h, w], opset=eo.opset)
    write_report(out_path, report)
    return report


def format_parity(r: dict[str, Any]) -> str:
    p = r["parity"]
    f = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
    return (f"INT8 vs FP32 on {r['calib_images']} calibration images: "
            f"{f(p['match_rate'], '.1%')} of {p['ref_detections']} FP32 detections found again "
            f"(score > {p['conf']:g}, same class, IoU >= {p['iou']:g}; mean IoU {f(p['mean_iou'], '.3f')}), "
            f"{f(p['extra_rate'], '.1%')} of INT8's {p['detections']} unmatched; score |delta| "
            f"max {p['score_delta_max']:.3g} mean {p['score_delta_mean']:.2g}; box |delta| on "
            f"confident anchors median {f(p['box_delta_px_median'], '.2f')} px, "
            f"p95 {f(p['box_delta_px_p95'], '.2f')} px. "
            f"Size {r['fp32_bytes'] / 2**20:.2f} -> {r['int8_bytes'] / 2**20:.2f} MB "
            f"({r['int8_bytes'] / r['fp32_bytes']:.0%}); {r['tail_nodes']} decode-tail nodes "
            f"kept in float ({', '.join(r['tail_ops'])})")
