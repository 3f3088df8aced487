"""ONNX export of a Darknet model, checked in onnxruntime before it is reported done.

Graph contract (what deployment code may rely on):

* input ``images``: float32 [B, 3, H, W], RGB, 0..1. B is dynamic unless ``static``; H, W are
  fixed at export (``img_size`` S or (H, W)).
* default output ``detections``: [B, N, 5+nc] = x, y, w, h (box centre and size in input
  pixels), objectness and class scores after sigmoid; rows ordered by YOLO layer (cfg order),
  anchor, grid row, grid column -- the same tensor as ``Darknet.eval()(images)``.
* ``raw=True``: one output per [yolo] layer, ``raw0``, ``raw1``, ...: [B, na, ny, nx, 5+nc], the
  head maps before any sigmoid/exp (``Darknet.forward_raw``).
* ``nms=True``: ONNX ``NonMaxSuppression`` in the graph, per image and per class, on score =
  objectness * class score (darknet's prob), kept when score > conf_thres, suppressed when
  IoU > iou_thres. Outputs, K = kept boxes over the whole batch, at most ``max_det`` per image:
  ``boxes`` [K, 4] float32 x1, y1, x2, y2 in input pixels; ``scores`` [K] float32;
  ``classes`` [K] int64; ``batch_index`` [K] int64. Rows sorted by batch index, then score
  descending; an image keeps its max_det best rows. K may be 0.

BatchNorm is folded into the convs of a *copy* of the model (darknet's fuse_conv_batchnorm); the
caller's model is never changed. The export uses torch's TorchScript-based exporter
(``dynamo=False``): in torch 2.13 the default dynamo exporter needs the ``onnxscript`` package,
which this project does not depend on. Mish maps to the native ONNX ``Mish`` op from opset 18
(below it, Softplus/Tanh/Mul). Darknet's -inf maxpool padding exports as ``Pad``
(constant -inf) + ``MaxPool``; onnxruntime evaluates it exactly (tests/test_onnx.py checks it
against a numpy darknet forward).

Every export is verified: ``onnx.checker``, then onnxruntime vs the unfused PyTorch model on a
seeded random batch; |delta| > tol * max(1, |reference|) anywhere is an error (boxes are in
pixels, so the bound scales with the value). With nms the numbers are checked on the same graph
without NMS, and the NMS graph against ``reference_nms`` fed onnxruntime's own detections
(near-tied scores may swap between torch and onnxruntime; that is not an export error). The
file is written to a temp name and renamed only after the check passes.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from yolo_slim.darknet.cfg import net_channels
from yolo_slim.core.errors import YoloSlimError, write_error
from yolo_slim.core.paths import clear_stale_temps, temp_path
from yolo_slim.sections.convolutional import ConvBlock
from yolo_slim.sections.yolo import decode_terms, grid_and_stride
from yolo_slim.deploy.nms import NonMaxSuppression, StableArgsort
from yolo_slim.deploy.runtime import ort_session
from yolo_slim.nn.model import Darknet, check_img_size


@dataclass
class ExportOptions:
    img_size: int | Sequence[int] = 416  # S or (H, W)
    batch_size: int = 1  # example batch for the trace; the fixed batch with static=True
    opset: int = 18
    static: bool = False
    raw: bool = False
    nms: bool = False
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 300
    tol: float = 1e-3
    check_batch: int = 2  # batch of the onnxruntime check (ignored when static)
    seed: int = 0

    @property
    def img_hw(self) -> tuple[int, int]:
        s = [self.img_size] if isinstance(self.img_size, int) else list(self.img_size)
        if len(s) not in (1, 2) or any(int(v) < 1 for v in s):
            raise YoloSlimError(f"--img-size {s}: give S or H W, positive integers")
        return (int(s[0]), int(s[-1]))


def resolve_options(args: ExportOptions | argparse.Namespace | dict | None = None,
                    **overrides: Any) -> ExportOptions:
    """ExportOptions from a dataclass, an argparse namespace or a dict (unknown keys ignored)."""
    if isinstance(args, ExportOptions):
        base = dataclasses.asdict(args)
    elif args is None:
        base = {}
    else:
        base = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in dataclasses.fields(ExportOptions)}
    opts = ExportOptions(**{k: v for k, v in {**base, **overrides}.items() if k in names})
    if opts.raw and opts.nms:
        raise YoloSlimError("--raw and --nms exclude each other")
    if opts.opset < 11:  # NonMaxSuppression/TopK/Resize as used here need 11 (10 crashed ORT)
        raise YoloSlimError(f"--opset {opts.opset}: use 11 or newer (default 18)")
    if opts.batch_size < 1 or opts.check_batch < 1 or opts.max_det < 1:
        raise YoloSlimError("--batch-size and --max-det must be at least 1")
    opts.img_hw  # validates img_size
    return opts


def fuse_conv_bn(model: Darknet) -> Darknet:
    """A copy of `model` in eval mode with every BN folded into its conv:
    W' = W * g/sqrt(var+eps), b' = beta - mean * g/sqrt(var+eps)."""
    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in fused.module_list:
            if not isinstance(m, ConvBlock) or m.bn is None:
                continue
            c, bn = m.conv, m.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                             c.dilation, c.groups, bias=True)
            conv.weight.copy_(c.weight * scale.view(-1, 1, 1, 1))
            conv.bias.copy_(bn.bias - bn.running_mean * scale)
            m.conv, m.bn = conv, None
    return fused


class DeployModel(nn.Module):
    """images -> the graph outputs of the contract above, for one input size. The decode uses
    grids and strides precomputed as constants (no meshgrid/Range in the graph); it computes the
    same values as YOLOLayer.decode, which the export check compares it with."""

    def __init__(self, model: Darknet, img_hw: tuple[int, int], opts: ExportOptions):
        super().__init__()
        self.model, self.opts = model, opts
        with torch.no_grad():
            try:
                raw = model.forward_raw(torch.zeros(1, net_channels(model.module_defs), *img_hw))
            except RuntimeError as e:
                raise YoloSlimError(f"--img-size {img_hw[0]}x{img_hw[1]} does not fit this cfg "
                                    f"(try a multiple of 32): {str(e).splitlines()[0]}") from None
        self.consts = []
        for h, p in zip(model.heads, raw):
            grid, stride = grid_and_stride(p.shape[2], p.shape[3], img_hw)
            self.consts.append((grid, stride, h.anchors.float().view(1, h.na, 1, 1, 2)))

    def decode(self, k: int, p: torch.Tensor) -> torch.Tensor:
        h, (grid, stride, anchors) = self.model.heads[k], self.consts[k]
        xy, wh, conf = decode_terms(p, anchors, h.scale_x_y, h.new_coords)
        return torch.cat([(xy + grid) * stride, wh, conf], -1).flatten(1, 3)

    def forward(self, x: torch.Tensor):
        raw = self.model.forward_raw(x)
        if self.opts.raw:
            return tuple(raw)
        det = torch.cat([self.decode(k, p) for k, p in enumerate(raw)], 1)
        return self.nms(det) if self.opts.nms else det

    def nms(self, det: torch.Tensor) -> tuple[torch.Tensor, ...]:
        o = self.opts
        boxes = torch.cat([det[..., :2] - det[..., 2:4] / 2, det[..., :2] + det[..., 2:4] / 2], -1)
        scores = (det[..., 5:] * det[..., 4:5]).transpose(1, 2).contiguous()  # [B, nc, N]
        sel = NonMaxSuppression.apply(boxes, scores, o.max_det, o.iou_thres, o.conf_thres)
        b, c, i = sel[:, 0], sel[:, 1], sel[:, 2]
        box, score = boxes[b, i], scores[b, c, i]
        # batch ascending, then score descending; float64 so the score keeps its precision;
        # stable like ONNX TopK, so exact ties keep the NMS order (class, then box)
        order = StableArgsort.apply(b.double() * 2 + (1 - score.double()))
        b, c, box, score = b[order], c[order], box[order], score[order]
        # rank within its image via a cumulative one-hot count; keep the first max_det. The
        # image ids come from a cumsum over the batch axis, not arange(B): a traced arange would
        # freeze the example batch size into the graph.
        images = torch.ones_like(det[:, :1, 0], dtype=torch.int64).cumsum(0) - 1  # [B, 1]
        onehot = (b.unsqueeze(0) == images).long()  # [B, K]
        rank = (onehot.cumsum(1) * onehot).sum(0) - 1
        keep = rank < o.max_det
        return box[keep], score[keep], c[keep], b[keep]


def output_names(model: Darknet, opts: ExportOptions) -> list[str]:
    if opts.raw:
        return [f"raw{k}" for k in range(len(model.heads))]
    return ["boxes", "scores", "classes", "batch_index"] if opts.nms else ["detections"]


_MISH_REGISTERED = False


def _register_mish() -> None:
    """The TorchScript exporter writes mish as Softplus*Tanh*Mul; opset 18 has a native Mish
    op (one kernel in onnxruntime), so map aten::mish to it from opset 18 on."""
    global _MISH_REGISTERED
    if not _MISH_REGISTERED:
        torch.onnx.register_custom_op_symbolic("aten::mish", lambda g, x: g.op("Mish", x), 18)
        _MISH_REGISTERED = True


def _torch_export(deploy: DeployModel, x: torch.Tensor, path: str, names: list[str],
                  opts: ExportOptions) -> None:
    dyn = None
    if not opts.static:
        dyn = {"images": {0: "batch"}}
        for n in names:
            dyn[n] = {0: "batch"} if not opts.nms else {0: "K"}
    with warnings.catch_warnings():
        # the TorchScript exporter warns that it is legacy and about unfoldable slices
        warnings.simplefilter("ignore")
        _register_mish()
        torch.onnx.export(deploy, (x,), path, dynamo=False, opset_version=opts.opset,
                          input_names=["images"], output_names=names, dynamic_axes=dyn,
                          do_constant_folding=True)


def compare_outputs(ref: Sequence[Any], got: Sequence[np.ndarray], tol: float,
                    what: str = "torch", runtime: str = "onnxruntime") -> dict[str, float]:
    """max |delta| and max |delta|/max(1,|ref|) over all outputs of `runtime` (`got`) against
    `what` (`ref`); raise if the latter > tol."""
    worst, worst_rel = 0.0, 0.0
    for k, (r, g) in enumerate(zip(ref, got)):
        r = r.numpy() if isinstance(r, torch.Tensor) else np.asarray(r)
        if r.shape != g.shape:
            raise YoloSlimError(f"{runtime} output shape {g.shape} != {what} {r.shape}")
        for who, v in ((what, r), (runtime, g)):  # a NaN would drop out of max() below
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise YoloSlimError(f"output {k} of {who} holds {int((~np.isfinite(v)).sum())} "
                                    "non-finite values: the model overflows on the check input")
        if r.size:
            d = np.abs(g.astype(np.float64) - r)
            worst = max(worst, float(d.max()))
            worst_rel = max(worst_rel, float((d / np.maximum(1.0, np.abs(r))).max()))
    if worst_rel > tol:
        raise YoloSlimError(f"{runtime} differs from {what}: max |delta| = {worst:.3g} "
                            f"(relative {worst_rel:.3g} > tol {tol:g})")
    return {"max_abs_delta": worst, "max_rel_delta": worst_rel}


def check_onnx(path: str, reference: Callable[[torch.Tensor], Any], x: torch.Tensor,
               tol: float) -> dict[str, float]:
    """onnx.checker, then onnxruntime vs `reference` on x; raise if outside tol."""
    import onnx
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # checker raises ValidationError or InferenceError
        raise YoloSlimError(f"onnx.checker rejected the export: {str(e).splitlines()[0]}") from None
    with torch.no_grad():
        ref = reference(x)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    return compare_outputs(ref, ort_session(path).run(None, {"images": x.numpy()}), tol)


def _export_checked(model: Darknet, opts: ExportOptions, tmp: str,
                    x_trace: torch.Tensor, x_check: torch.Tensor) -> dict[str, Any]:
    """Export to `tmp` and verify it; with nms the numeric part is checked on the detections
    graph and the NMS step against reference_nms on onnxruntime's own detections, because a
    1e-7 score difference may legitimately reorder near-tied boxes."""
    hw = opts.img_hw
    ref_model = copy.deepcopy(model).eval()  # unfused: the check also covers the BN folding
    det_opts = dataclasses.replace(opts, nms=False)
    fused = fuse_conv_bn(model)
    det_path = tmp + ".det" if opts.nms else tmp
    try:
        _torch_export(DeployModel(fused, hw, det_opts).eval(), x_trace, det_path,
                      output_names(model, det_opts), det_opts)
        report = check_onnx(det_path, ref_model.forward_raw if opts.raw else ref_model,
                            x_check, opts.tol)
        if opts.nms:
            deploy = DeployModel(fused, hw, opts).eval()
            _torch_export(deploy, x_trace, tmp, output_names(model, opts), opts)
            check_onnx(tmp, lambda x: [], x_check, opts.tol)  # runs the checker
            feed = {"images": x_check.numpy()}
            det = torch.from_numpy(ort_session(det_path).run(None, feed)[0])
            with torch.no_grad():
                ref = deploy.nms(det)
            nms = compare_outputs(ref, ort_session(tmp).run(None, feed), opts.tol,
                                  "reference NMS")
            report.update(nms_max_abs_delta=nms["max_abs_delta"], nms_kept=int(ref[0].shape[0]))
    finally:
        if det_path != tmp and os.path.exists(det_path):
            os.remove(det_path)
    return report


def check_inputs(model: Darknet, opts: ExportOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(trace batch, check batch): seeded uniform 0..1 inputs at the export size; every runtime's
    export check feeds the same check batch."""
    h, w = check_img_size(model.module_defs, opts.img_hw)
    gen = torch.Generator().manual_seed(opts.seed)
    c = net_channels(model.module_defs)
    x_trace = torch.rand(opts.batch_size, c, h, w, generator=gen)
    return x_trace, torch.rand(opts.batch_size if opts.static else opts.check_batch, c, h, w,
                               generator=gen)


def export_onnx(model: Darknet, out_path: str,
                args: ExportOptions | argparse.Namespace | dict | None = None,
                **overrides: Any) -> dict[str, Any]:
    """Export `model` to `out_path` (see the module docstring), check it, return a report:
    outputs, opset, max_abs_delta/max_rel_delta of the onnxruntime check."""
    opts = resolve_options(args, **overrides)
    model = getattr(model, "module", model)  # unwrap DDP
    x_trace, x_check = check_inputs(model, opts)
    h, w = x_check.shape[2:]
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise YoloSlimError(f"output folder does not exist: {out_dir}")
    clear_stale_temps(out_path)  # a killed export's temps; named so no *.onnx glob sees them
    tmp = temp_path(out_path)
    try:
        try:
            report = _export_checked(model, opts, tmp, x_trace, x_check)
        except YoloSlimError:
            raise
        except OSError as e:  # disk full, quota: name the user's file, not the temp
            raise write_error(out_path, e) from None
        except Exception as e:  # torch raises many types for an unsupported opset/op
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise YoloSlimError(f"ONNX export failed (opset {opts.opset}): {msg}") from None
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    report.update(path=out_path, outputs=output_names(model, opts), opset=opts.opset,
                  img_hw=(h, w), check_batch=int(x_check.shape[0]), dynamic_batch=not opts.static)
    return report
