"""ncnn (CPU, FP32) behind deploy/backends.py's interface: export, load, run, the one-conv nets
of the latency table.

What an export writes, for ``--output slim.param``:

* ``slim.param`` / ``slim.bin``: the network, written by deploy/ncnn_writer.py straight from the
  Darknet modules (BN folded, float32 weights; no pnnx, so no fp16 weights and no -inf padding
  value). Input blob ``images`` [3, H, W] (H, W fixed at export); one output blob per [yolo]
  head, ``raw0``, ``raw1``, ...: the **raw-maps variant** of the export contract. ncnn has no
  5-D tensor for the head's reshape and box decode, so the file stops at the maps the heads
  read and the project decodes them. A Runner returns them stacked over the batch as
  [B, na*(5+nc), ny, nx] (the conv layout, not the ONNX ``--raw`` [B, na, ny, nx, 5+nc]:
  `Runner.decode` turns them into [B, N, 5+nc] detections, the ``detections`` contract).
* ``slim.param.json``: what decoding needs and the file cannot hold: input shape, output
  names, layout, and per head its anchors, classes, scale_x_y and new_coords; plus the export
  check's numbers.

Every export is checked in ncnn before it is written: the temp .param/.bin are loaded and run on
a seeded random batch, compared with the unfused PyTorch ``forward_raw`` (so the check covers
the BN folding too); |delta| > tol * max(1, |ref|) anywhere refuses the export and leaves no
file. Only then are the three temps renamed into place (.bin, .json, then .param: a reader
that finds the .param finds the rest).

The net runs with ncnn's packed layout and every fp16/bf16 option off (FP32 parity); ncnn is
batch-1, so a batch is run image by image.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import tempfile
from typing import Any, Iterator

import numpy as np
import torch

from yolo_slim.core.errors import YoloSlimError, require_file, write_error
from yolo_slim.core.paths import clear_stale_temps, temp_path
from yolo_slim.deploy.export import check_inputs, compare_outputs, resolve_options
from yolo_slim.deploy.ncnn_writer import INPUT, NcnnGraph, conv_layer, write_model
from yolo_slim.nn.model import Darknet
from yolo_slim.sections.yolo import YOLOLayer

NAME, SUFFIX = "ncnn", ".param"
NARROW = True  # ncnn packs channels by 1, 4, 8 or 16: a conv under the block runs narrower (analysis/latency.grid_points)
LAYOUT = "[B, na*(5+nc), ny, nx]"


def available() -> str | None:
    try:
        import ncnn  # noqa: F401
    except ImportError:
        return "pip install ncnn (the runtimes extra)"
    return None


def version() -> str:
    import ncnn
    return ncnn.__version__


def paths(param_path: str) -> dict[str, str]:
    """The files of one export: param, bin (<stem>.bin beside it) and the sidecar json."""
    stem = param_path[:-len(SUFFIX)] if param_path.endswith(SUFFIX) else param_path
    return {"param": param_path, "bin": stem + ".bin", "json": param_path + ".json"}


def files(param_path: str) -> list[str]:
    """What a shipped ncnn model is (backends.shipped_files): .param, .bin, .param.json."""
    return list(paths(param_path).values())


@contextlib.contextmanager
def _stderr_to(buf: list[str]) -> Iterator[None]:
    """ncnn prints why a load failed on the C stderr: capture it for a one-line error."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            buf.append(f.read().decode(errors="replace").strip())


def _net(param: str, weights: str, threads: int | None, what: str):
    import ncnn
    net = ncnn.Net()
    o = net.opt
    o.use_vulkan_compute = False
    o.use_packing_layout = True
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                 "use_bf16_storage", "use_bf16_packed"):
        if hasattr(o, flag):
            setattr(o, flag, False)
    if threads:
        o.num_threads = threads
    said: list[str] = []
    with _stderr_to(said):
        rp = net.load_param(param)
        rm = net.load_model(weights) if rp == 0 else 0
    if rp or rm:
        why = (said[0].splitlines() or ["no reason given"])[0]
        f = param if rp else weights
        raise YoloSlimError(f"{what or f}: ncnn cannot load {os.path.basename(f)}: {why}")
    return net


class NcnnRunner:
    """One ncnn net; call it on a float32 [B, C, H, W] batch -> a list of [B, c, h, w] maps."""

    def __init__(self, param: str, weights: str, threads: int | None = None,
                 meta: dict[str, Any] | None = None, what: str = ""):
        self.net = _net(param, weights, threads, what)
        self.meta = meta or {}
        text = open(param, encoding="utf-8", errors="replace").read()
        m = re.search(r"^Input\s+\S+\s+0\s+1\s+(\S+)(.*)$", text, re.M)
        kv = dict(re.findall(r"(\d+)=(-?\d+)", m.group(2))) if m else {}
        if not m or not all(k in kv for k in "012"):
            raise YoloSlimError(f"{what or param}: no Input layer with w, h, c (0=, 1=, 2=)")
        self.input_name = m.group(1)
        self.input_shape = (None, int(kv["2"]), int(kv["1"]), int(kv["0"]))
        outs = self.meta.get("outputs") or sorted(set(re.findall(r"\b(raw\d+)\b", text)),
                                                  key=lambda s: int(s[3:]))
        self.output_names = list(outs) or list(self.net.output_names())

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        import ncnn
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape[1:]:
            raise YoloSlimError(f"ncnn net takes [B, {', '.join(map(str, self.input_shape[1:]))}]"
                                f", got {list(x.shape)}")
        per_out: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for img in x:
            ex = self.net.create_extractor()
            ex.input(self.input_name, ncnn.Mat(img))
            for k, name in enumerate(self.output_names):
                r, mat = ex.extract(name)
                if r != 0:
                    raise YoloSlimError(f"ncnn failed to compute {name} (status {r})")
                per_out[k].append(np.array(mat, dtype=np.float32, copy=True))
        return [np.stack(o) for o in per_out]

    @property
    def heads(self) -> list[YOLOLayer]:
        if "heads" not in self.meta:
            raise YoloSlimError("this ncnn file has no <name>.param.json beside it: its raw maps "
                                "cannot be decoded")
        return [YOLOLayer([tuple(a) for a in h["anchors"]], h["classes"], h["scale_x_y"],
                          bool(h["new_coords"])) for h in self.meta["heads"]]

    def decode(self, outs: list[np.ndarray]) -> torch.Tensor:
        """Raw maps [B, na*(5+nc), ny, nx] -> detections [B, N, 5+nc] (input pixels)."""
        hw = self.input_shape[2:]
        with torch.no_grad():
            return torch.cat([h.decode(h(torch.from_numpy(o)), hw)
                              for h, o in zip(self.heads, outs)], 1)


def load(path: str, threads: int | None = None) -> NcnnRunner:
    f = paths(path)
    require_file(path, "ncnn param")
    require_file(f["bin"], "ncnn weights (.bin beside the .param)")
    meta = None
    if os.path.isfile(f["json"]):
        try:
            meta = json.loads(open(f["json"], encoding="utf-8").read())
        except (ValueError, UnicodeDecodeError) as e:
            raise YoloSlimError(f"{f['json']}: not JSON ({str(e).splitlines()[0]})") from None
    return NcnnRunner(path, f["bin"], threads, meta, path)


def conv_runner(spec: dict[str, Any], cin: int, cout: int, threads: int | None = None) -> NcnnRunner:
    """Input -> Convolution (+bias, spec's activation), random weights, at spec's input map."""
    k, groups = spec["size"], spec["groups"]
    h, w = spec["in_hw"]
    g = NcnnGraph(cin, h, w, "x")
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((cout, cin // groups, k, k)) * 0.01).astype(np.float32)
    top = conv_layer(g, "x", weight, np.zeros(cout, np.float32), (spec["stride_y"], spec["stride_x"]),
                     spec["padding"] * spec["dilation"], spec["dilation"], groups, spec["act"], "conv")
    g.rename_blob(top, "y")
    with tempfile.TemporaryDirectory() as d:
        p, b = os.path.join(d, "c.param"), os.path.join(d, "c.bin")
        with open(p, "w") as fh:
            fh.write(g.param_text())
        with open(b, "wb") as fh:
            fh.write(g.bin_bytes())
        r = NcnnRunner(p, b, threads, {"outputs": ["y"]})
    r.input_shape = (spec["batch"], cin, h, w)
    return r


def head_meta(model: Darknet) -> list[dict[str, Any]]:
    return [{"anchors": h.anchors.tolist(), "classes": h.nc, "scale_x_y": h.scale_x_y,
             "new_coords": int(h.new_coords), "na": h.na} for h in model.heads]


def _check(model: Darknet, tmp: dict[str, str], x: torch.Tensor, tol: float,
           out_path: str) -> dict[str, float]:
    """ncnn on the temp files vs the unfused model's forward_raw, maps as [B, na*no, ny, nx]."""
    with torch.no_grad():
        ref = [p.permute(0, 1, 4, 2, 3).flatten(1, 2) for p in model.eval().forward_raw(x)]
    got = NcnnRunner(tmp["param"], tmp["bin"], what=out_path)(x.numpy())
    return compare_outputs(ref, got, tol, runtime="ncnn")


def export(model: Any, out_path: str, opts: Any = None) -> dict[str, Any]:
    """Write and check `out_path` (.param) with its .bin and .param.json (module docstring)."""
    o = resolve_options(opts)
    if o.nms:
        raise YoloSlimError("--nms: the ncnn export writes the raw head maps (ncnn has no "
                            "5-D decode); NMS runs in the project")
    if not out_path.endswith(SUFFIX):
        raise YoloSlimError(f"--output {out_path}: an ncnn export ends in {SUFFIX}")
    model = copy.deepcopy(getattr(model, "module", model)).eval()
    x = check_inputs(model, o)[1]  # the check batch every runtime's export is checked on
    h, w = int(x.shape[2]), int(x.shape[3])
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise YoloSlimError(f"output folder does not exist: {out_dir}")
    g = write_model(model, (h, w))
    final = paths(out_path)
    clear_stale_temps(list(final.values()))
    tmp = {k: temp_path(v) for k, v in final.items()}
    outputs = [f"raw{k}" for k in range(len(model.heads))]
    try:
        try:
            with open(tmp["param"], "w") as f:
                f.write(g.param_text())
            with open(tmp["bin"], "wb") as f:
                f.write(g.bin_bytes())
            report = _check(model, tmp, x, o.tol, out_path)
            meta = {"format": "yolo-slim ncnn raw maps", "input": {"name": INPUT, "shape": [
                int(x.shape[1]), h, w]}, "outputs": outputs, "layout": LAYOUT,
                "heads": head_meta(model), "check": {**report, "batch": int(x.shape[0])}}
            with open(tmp["json"], "w") as f:
                f.write(json.dumps(meta, indent=1))
        except OSError as e:  # disk full, quota: name the user's file, not the temp
            raise write_error(out_path, e) from None
        for k in ("bin", "json", "param"):
            os.replace(tmp[k], final[k])
    finally:
        for t in tmp.values():
            if os.path.exists(t):
                os.remove(t)
    report.update(path=out_path, files=files(out_path), outputs=outputs, layout=LAYOUT,
                  img_hw=(h, w), check_batch=int(x.shape[0]), dynamic_batch=True)
    return report
