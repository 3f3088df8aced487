"""Evaluate the file you ship: an exported ONNX detector (FP32 or INT8) run in onnxruntime,
scored by the same preprocessing (letterbox unless told), NMS and COCO-style mAP as the torch
model (eval/evaluate.py).

`OnnxDetector` looks like the torch model to `evaluate()`: called on a [B, 3, H, W] batch it
returns the [B, N, 5+nc] detections. A ``detections`` export is used as it is; a ``--raw``
export (head maps) is decoded by the [yolo] heads of its cfg; an ``--nms`` export is refused
(its score threshold is baked in, so mAP would be cut off there).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from yolo_slim.core.errors import YoloSlimError, require_file


class OnnxDetector:
    training = False

    def __init__(self, path: str, cfg: str | None = None, threads: int | None = None):
        from yolo_slim.deploy.runtime import ort_session
        require_file(path, "ONNX model")
        try:
            self.session = ort_session(path, threads)
        except Exception as e:  # onnxruntime raises its own types for unreadable models
            raise YoloSlimError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape  # [B, 3, H, W]; B is a name when dynamic
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[2:]):
            raise YoloSlimError(f"{path}: expected a fixed-size [B, 3, H, W] input, got {shape}")
        self.batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.img_hw = (int(shape[2]), int(shape[3]))
        outs = [o.name for o in self.session.get_outputs()]
        self.decoder = None
        if outs == ["detections"]:
            last = self.session.get_outputs()[0].shape[-1]
            if not isinstance(last, int):  # symbolic in the graph: ask the graph once
                zero = np.zeros((self.batch or 1, int(shape[1]), *self.img_hw), np.float32)
                last = self.session.run(None, {self.input_name: zero})[0].shape[-1]
            self.num_classes = int(last) - 5
        elif outs and all(o.startswith("raw") for o in outs):
            if cfg is None:
                raise YoloSlimError(f"{path} is a --raw export (head maps): pass --cfg so the "
                                    "[yolo] heads can decode them")
            from yolo_slim.darknet.cfg import parse_cfg
            from yolo_slim.nn.model import Darknet
            self.decoder = Darknet(parse_cfg(cfg))
            if len(self.decoder.heads) != len(outs):
                raise YoloSlimError(f"{cfg} has {len(self.decoder.heads)} [yolo] layers, "
                                    f"{path} {len(outs)} raw outputs")
            self.num_classes = self.decoder.num_classes
        else:
            raise YoloSlimError(f"{path}: outputs {outs}; evaluation needs the `detections` "
                                "export (or --raw with --cfg), not --nms")

    # the torch-module surface evaluate() uses
    def eval(self) -> "OnnxDetector":
        return self

    def train(self, mode: bool = True) -> "OnnxDetector":
        return self

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        n = len(x)
        if self.batch is not None and n != self.batch:  # a static graph: pad, run, cut
            outs = [self.run_fixed(x[k:k + self.batch]) for k in range(0, n, self.batch)]
            return [np.concatenate(o)[:n] for o in zip(*outs)]
        return self.session.run(None, {self.input_name: x})

    def run_fixed(self, x: np.ndarray) -> list[np.ndarray]:
        if len(x) < self.batch:
            x = np.concatenate([x, np.zeros((self.batch - len(x), *x.shape[1:]), x.dtype)])
        return self.session.run(None, {self.input_name: x})

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        if tuple(imgs.shape[-2:]) != self.img_hw:
            raise YoloSlimError(f"the ONNX model takes {self.img_hw[0]}x{self.img_hw[1]} input, "
                                f"the loader gives {imgs.shape[-2]}x{imgs.shape[-1]}")
        outs = self.run(imgs.detach().cpu().float().numpy())
        if self.decoder is None:
            return torch.from_numpy(outs[0])
        with torch.no_grad():
            return self.decoder.decode([torch.from_numpy(o) for o in outs], self.img_hw)


def evaluate_onnx(path: str, data_file: str, split: str = "valid", batch_size: int = 16,
                  conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300,
                  workers: int = -1, cfg: str | None = None, img_size: int | None = None,
                  progress: bool = True, threads: int | None = None,
                  preprocess: str = "letterbox", reference: torch.nn.Module | None = None,
                  reference_conf: float = 0.25) -> dict[str, Any]:
    """mAP of an ONNX file on a .data split: evaluate() with an OnnxDetector in place of the
    torch model. The input size comes from the graph; `img_size`, if given, must match it.
    With `reference` (a torch model): agreement with its detections, as evaluate() scores it."""
    from yolo_slim.core.device import auto_workers
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    from yolo_slim.eval.evaluate import evaluate
    det = OnnxDetector(path, cfg, threads)
    workers = auto_workers("cpu", workers)  # -1: none on small CPUs
    h, w = det.img_hw
    if h != w:
        raise YoloSlimError(f"{path}: input {h}x{w}; evaluation prepares square inputs")
    if img_size is not None and img_size != h:
        raise YoloSlimError(f"--img-size {img_size}: {path} was exported for {h}")
    data = parse_data_file(data_file)
    if det.num_classes != data.classes:
        raise YoloSlimError(f"{path} has {det.num_classes} classes, {data_file} has {data.classes}")
    loader, _ = create_dataloader(getattr(data, split), h, batch_size, augment=False, rect=False,
                                  workers=workers, shuffle=False, nc=data.classes,
                                  verbose=progress, preprocess=preprocess)
    return evaluate(det, loader, conf_thres, iou_thres, "cpu", progress=progress,
                    names=data.names, nc=det.num_classes, max_det=max_det, reference=reference,
                    reference_conf=reference_conf)
