"""In-graph NMS for `export.py --nms`: ONNX NonMaxSuppression and a stable argsort as autograd
Functions that run eagerly in torch (reference semantics) and trace to the ONNX ops."""
from __future__ import annotations

import numpy as np
import torch


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_thres: float,
                  conf_thres: float) -> torch.Tensor:
    """Eager NonMaxSuppression with ONNX semantics: boxes [B,N,4] corners, scores [B,C,N] ->
    selected [K,3] (batch, class, box), per batch then class, score descending. Greedy: each
    kept box suppresses the remaining ones with IoU > iou_thres (one vector op per kept box)."""
    bx, sc = boxes.detach().cpu().numpy(), scores.detach().cpu().numpy()
    out = []
    for b in range(bx.shape[0]):
        x1, y1, x2, y2 = (bx[b, :, k] for k in range(4))
        area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        for c in range(sc.shape[1]):
            idx = np.nonzero(sc[b, c] > conf_thres)[0]
            idx = idx[np.argsort(-sc[b, c, idx], kind="stable")]
            kept = 0
            while idx.size and kept < max_per_class:
                i, idx = idx[0], idx[1:]
                out.append((b, c, i))
                kept += 1
                iw = np.clip(np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]), 0, None)
                ih = np.clip(np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]), 0, None)
                inter = iw * ih
                union = area[i] + area[idx] - inter
                iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
                idx = idx[iou <= iou_thres]
    return torch.tensor(out, dtype=torch.int64).view(-1, 3)


class NonMaxSuppression(torch.autograd.Function):
    """Eager: reference_nms. Traced: the ONNX NonMaxSuppression op (opset >= 11)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou: float, conf: float):  # type: ignore[override]
        return reference_nms(boxes, scores, max_per_class, iou, conf)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, conf: float):
        const = lambda v, dt: g.op("Constant", value_t=torch.tensor([v], dtype=dt))  # noqa: E731
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
                    const(iou, torch.float32), const(conf, torch.float32), center_point_box_i=0)


class StableArgsort(torch.autograd.Function):
    """Ascending argsort, ties by index. Traced: ONNX TopK over the whole axis, which the spec
    makes stable (lower index first on ties); torch's stable sort has no ONNX export."""

    @staticmethod
    def forward(ctx, key):  # type: ignore[override]
        return torch.argsort(key, stable=True)

    @staticmethod
    def symbolic(g, key):
        _, idx = g.op("TopK", key, g.op("Shape", key), axis_i=0, largest_i=0, sorted_i=1,
                      outputs=2)
        return idx
