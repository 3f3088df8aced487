"""OpenVINO (CPU plugin) behind deploy/backends.py's interface: the IR export (.xml + .bin),
checked in OpenVINO against PyTorch, and the compiled model evaluate and the latency table run.

Precision. On a CPU with AVX512-BF16 or AMX the CPU plugin infers in bf16 unless told otherwise
(on this project's 2-core AMD EPYC, AVX512-BF16, the default hint is bf16: max |delta| 0.41 on
the random demo model's detections at 64 px, against 2e-5 in f32). Every model compiled here sets INFERENCE_PRECISION_HINT=f32
and the runner reports what the plugin kept (`precision`), so a timing or a score says which
precision ran. The IR keeps FP32 weights (save_model's compress_to_fp16=False: the default
would halve the .bin by rounding every weight to fp16).

Export. The checked ONNX export (deploy/export.py, verified in onnxruntime) goes to a temp
folder, openvino.convert_model reads it and save_model writes the IR; the IR is compiled and
its outputs compared with the unfused PyTorch model on export.py's seeded check batch, with the
same tolerance rule (compare_outputs). Only then are the files moved to the output: the .bin
first, then the .xml, so a new .xml never points at an old .bin. The output contract is the
ONNX file's (`detections` [B, N, 5+nc], or `raw0..` with --raw); the batch stays dynamic (the
ONNX batch axis converts to `?`; --static fixes it), H and W are fixed. --nms is refused: the
NMS graph's exact check needs the runtime's own detections fed to a reference NMS, which only
the ONNX path implements; evaluate and detect run NMS after the detections.
"""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import numpy as np
import torch

from yolo_slim.core.errors import YoloSlimError, require_file, write_error

NAME, SUFFIX = "openvino", ".xml"
NARROW = False  # oneDNN pads a narrow map to its block inside the network (analysis/latency.grid_points)
_CORE: list = []  # one openvino.Core per process (it caches plugins)


def available() -> str | None:
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"the openvino package does not import ({e}); pip install openvino"
    return None


def version() -> str:
    import openvino
    return openvino.__version__.split("-")[0]


def core() -> Any:
    if not _CORE:
        import openvino
        _CORE.append(openvino.Core())
    return _CORE[0]


def compile_config(threads: int | None = None) -> dict[str, Any]:
    """CPU plugin settings of every compiled model: f32 (not the bf16 default on AMX/BF16 CPUs),
    latency mode (one request uses all its threads), `threads` inference threads."""
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def first_line(e: Exception) -> str:
    """The line of an OpenVINO exception that says what went wrong: its message is a stack of
    'Exception from <source>:<line>:' and 'Check ... failed at' lines with the reason last."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    said = [s for s in lines if not s.startswith(("Exception from ", "Check '", "FrontEnd API failed"))]
    return (said or lines or [type(e).__name__])[-1]


class OvRunner:
    """A compiled model (an IR file, ONNX bytes or an openvino.Model); call it on a float32 NCHW
    batch."""

    def __init__(self, model: Any, threads: int | None = None, where: str = "model"):
        try:
            if isinstance(model, (str, bytes)):
                model = core().read_model(model)
            self.compiled = core().compile_model(model, "CPU", compile_config(threads))
        except Exception as e:  # openvino raises RuntimeError subclasses of its own
            raise YoloSlimError(f"{where}: OpenVINO cannot load it: {first_line(e)}") from None
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(d.get_length() if d.is_static else None
                                 for d in self.compiled.inputs[0].get_partial_shape())
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(x, np.float32)})
        return [np.asarray(res[o]) for o in self.compiled.outputs]


def load(path: str, threads: int | None = None) -> OvRunner:
    require_file(path, "OpenVINO IR (.xml)")
    require_file(os.path.splitext(path)[0] + ".bin", "OpenVINO IR weights (.bin beside the .xml)")
    return OvRunner(path, threads, where=path)


def conv_runner(spec: dict[str, Any], cin: int, cout: int, threads: int | None = None) -> OvRunner:
    """The latency table's one-conv graph (ort_latency.conv_graph), read by OpenVINO's ONNX
    front end and compiled as shipped models are."""
    from yolo_slim.deploy.ort_latency import conv_graph
    return OvRunner(conv_graph(spec, cin, cout), threads)


def convert(onnx_path: str) -> Any:
    """openvino.Model of an ONNX file."""
    import openvino
    try:
        return openvino.convert_model(onnx_path)
    except Exception as e:
        raise YoloSlimError(f"OpenVINO cannot convert the ONNX export: {first_line(e)}") from None


def save_ir(ov_model: Any, xml_path: str) -> None:
    import openvino
    openvino.save_model(ov_model, xml_path, compress_to_fp16=False)


def move_ir(src_xml: str, out_xml: str) -> None:
    """Rename an IR pair: the .bin first, so the new .xml never appears beside an old .bin."""
    os.replace(os.path.splitext(src_xml)[0] + ".bin", os.path.splitext(out_xml)[0] + ".bin")
    os.replace(src_xml, out_xml)


def check_ir(model: Any, xml_path: str, opts: Any) -> dict[str, Any]:
    """The IR compiled in OpenVINO vs the unfused torch model on export.py's check batch."""
    from yolo_slim.deploy.export import check_inputs, compare_outputs
    x = check_inputs(model, opts)[1]
    ref_model = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = ref_model.forward_raw(x) if opts.raw else ref_model(x)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    runner = OvRunner(xml_path, where="the OpenVINO IR")
    report = compare_outputs(ref, runner(x.numpy()), opts.tol, runtime="OpenVINO")
    return {**report, "precision": runner.precision, "check_batch": int(x.shape[0])}


def export_checked(model: Any, tmp: str, opts: Any) -> tuple[str, str, dict[str, Any]]:
    """In folder `tmp`: the FP32 ONNX export (checked in onnxruntime) and its IR (checked in
    OpenVINO) -> (onnx path, xml path, report)."""
    from yolo_slim.deploy.export import export_onnx
    onnx_path, xml = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "fp32.xml")
    onnx_report = export_onnx(model, onnx_path, opts)
    save_ir(convert(onnx_path), xml)
    report = check_ir(model, xml, opts)
    report.update(onnx_check={k: onnx_report[k] for k in ("max_abs_delta", "max_rel_delta")},
                  outputs=onnx_report["outputs"], img_hw=onnx_report["img_hw"],
                  dynamic_batch=not opts.static, openvino=version())
    return onnx_path, xml, report


def resolve(model: Any, out_path: str, opts: Any, **overrides: Any) -> tuple[Any, Any, str]:
    """(unwrapped model, ExportOptions, existing output folder) of an OpenVINO export."""
    from yolo_slim.deploy.export import resolve_options
    opts = resolve_options(opts, **overrides)
    if opts.nms:
        raise YoloSlimError("--nms: the OpenVINO export writes detections (or --raw maps); "
                            "NMS runs after it (evaluate and detect do)")
    if not out_path.endswith(SUFFIX):
        raise YoloSlimError(f"--output {out_path}: an OpenVINO IR is a .xml file (its .bin beside it)")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise YoloSlimError(f"output folder does not exist: {out_dir}")
    return getattr(model, "module", model), opts, out_dir


def export(model: Any, out_path: str, opts: Any = None, **overrides: Any) -> dict[str, Any]:
    """The checked IR of `model` at out_path (.xml, and .bin beside it); the report: max_abs_delta,
    max_rel_delta (OpenVINO vs torch), precision, onnx_check, outputs, img_hw, check_batch."""
    model, opts, out_dir = resolve(model, out_path, opts, **overrides)
    try:  # the temp folder beside the output: the final renames stay on one file system
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ov-export-") as tmp:
            _, xml, report = export_checked(model, tmp, opts)
            move_ir(xml, out_path)
    except OSError as e:  # disk full, quota: name the user's file, not the temp
        raise write_error(out_path, e) from None
    report.update(path=out_path, bin=os.path.splitext(out_path)[0] + ".bin")
    return report

