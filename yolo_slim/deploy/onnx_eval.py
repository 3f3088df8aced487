"""Evaluate the file you ship, in the runtime it ships on: an exported detector (.onnx in
onnxruntime, .xml in OpenVINO, .param in ncnn; FP32 or INT8) scored by the same preprocessing
(letterbox unless told), NMS and COCO-style mAP as the torch model (eval/evaluate.py).

`FileDetector` looks like the torch model to `evaluate()`: called on a [B, 3, H, W] batch it
returns the [B, N, 5+nc] detections, from the Runner of the file's backend (deploy/backends.py,
chosen by the suffix). A ``detections`` export is used as it is; a ``--raw`` export (head maps,
or a runtime's raw-maps variant) is decoded by the [yolo] heads of its cfg; an ``--nms`` export
is refused (its score threshold is baked in, so mAP would be cut off there).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from yolo_slim.core.errors import YoloSlimError, require_file
from yolo_slim.deploy.backends import backend_for_file, precision


class FileDetector:
    training = False

    def __init__(self, path: str, cfg: str | None = None, threads: int | None = None):
        require_file(path, "model file")
        b = backend_for_file(path)
        self.runner, self.runtime = b.load(path, threads), b.NAME
        self.precision = precision(self.runner)
        shape = self.runner.input_shape  # (B or None, C, H, W)
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]):
            raise YoloSlimError(f"{path}: expected a fixed-size [B, 3, H, W] input, got {shape}")
        self.batch = shape[0]
        self.img_hw = (int(shape[2]), int(shape[3]))
        outs = list(self.runner.output_names)
        self.decode: Callable[[list[np.ndarray]], torch.Tensor] | None = None
        if outs and all(o.startswith("raw") for o in outs):
            self.decode = self.runner.decode if hasattr(self.runner, "decode") else \
                self._cfg_decode(path, cfg, len(outs))
        elif outs != ["detections"]:
            raise YoloSlimError(f"{path}: outputs {outs}; evaluation needs the `detections` "
                                "export (or --raw with --cfg), not --nms")
        zero = np.zeros((self.batch or 1, int(shape[1]), *self.img_hw), np.float32)
        self.num_classes = int(self.detections(self.runner(zero)).shape[-1]) - 5  # ask it once

    def _cfg_decode(self, path: str, cfg: str | None, n_out: int) -> Callable:
        """The decode of --raw maps [B, na, ny, nx, 5+nc] by the [yolo] heads of `cfg` (a runner
        with a raw-maps variant of its own, ncnn's, decodes them itself)."""
        if cfg is None:
            raise YoloSlimError(f"{path} is a --raw export (head maps): pass --cfg so the "
                                "[yolo] heads can decode them")
        from yolo_slim.darknet.cfg import parse_cfg
        from yolo_slim.nn.model import Darknet
        decoder = Darknet(parse_cfg(cfg))
        if len(decoder.heads) != n_out:
            raise YoloSlimError(f"{cfg} has {len(decoder.heads)} [yolo] layers, "
                                f"{path} {n_out} raw outputs")
        return lambda outs: decoder.decode([torch.from_numpy(o) for o in outs], self.img_hw)

    def detections(self, outs: list[np.ndarray]) -> torch.Tensor:
        if self.decode is None:
            return torch.from_numpy(outs[0])
        with torch.no_grad():
            return self.decode(outs)

    # the torch-module surface evaluate() uses
    def eval(self) -> "FileDetector":
        return self

    def train(self, mode: bool = True) -> "FileDetector":
        return self

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        n = len(x)
        if self.batch is not None and n != self.batch:  # a static graph: pad, run, cut
            outs = [self.run_fixed(x[k:k + self.batch]) for k in range(0, n, self.batch)]
            return [np.concatenate(o)[:n] for o in zip(*outs)]
        return self.runner(x)

    def run_fixed(self, x: np.ndarray) -> list[np.ndarray]:
        if len(x) < self.batch:
            x = np.concatenate([x, np.zeros((self.batch - len(x), *x.shape[1:]), x.dtype)])
        return self.runner(x)

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        if tuple(imgs.shape[-2:]) != self.img_hw:
            raise YoloSlimError(f"the {self.runtime} model takes {self.img_hw[0]}x{self.img_hw[1]} "
                                f"input, the loader gives {imgs.shape[-2]}x{imgs.shape[-1]}")
        return self.detections(self.run(imgs.detach().cpu().float().numpy()))


def evaluate_onnx(path: str, data_file: str, split: str = "valid", batch_size: int = 16,
                  conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300,
                  workers: int = -1, cfg: str | None = None, img_size: int | None = None,
                  progress: bool = True, threads: int | None = None,
                  preprocess: str = "letterbox", reference: torch.nn.Module | None = None,
                  reference_conf: float = 0.25) -> dict[str, Any]:
    """mAP of a shipped file (.onnx, .xml, .param) on a .data split: evaluate() with a
    FileDetector in place of the torch model. The input size comes from the graph; `img_size`,
    if given, must match it. With `reference` (a torch model): agreement with its detections,
    as evaluate() scores it. The metrics name the runtime and the precision it ran in."""
    from yolo_slim.core.device import auto_workers
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    from yolo_slim.eval.evaluate import evaluate
    det = FileDetector(path, cfg, threads)
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
    m = evaluate(det, loader, conf_thres, iou_thres, "cpu", progress=progress,
                 names=data.names, nc=det.num_classes, max_det=max_det, reference=reference,
                 reference_conf=reference_conf)
    return {**m, "runtime": det.runtime, "inference_precision": det.precision}


OnnxDetector = FileDetector  # the names before other runtimes: a .onnx file is still one
evaluate_file = evaluate_onnx
