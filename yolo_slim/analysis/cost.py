"""Params, FLOPs, per-layer channel tables and OpenCV plots: one way of counting for the project.

FLOPs convention: only [convolutional] layers count, 2 FLOPs per multiply-add, so a conv costs
``2 * out_h * out_w * filters * (in_channels / groups) * size**2`` (= 2 * out_h * out_w *
weight.numel()). Bias/BN adds, activations, pooling, upsampling, routes and shortcut adds are
not counted (together < 1% of a YOLO). Spatial sizes come from the cfg arithmetic of darknet
(darknet-format.md §2), so FLOPs can be computed for a cfg or a channel mask without a forward.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from yolo_slim.core.draw import canvas, put_text, save_png
from yolo_slim.sections import infer_shapes, section_of


def count_params(model) -> int:
    """Trainable parameters: conv weights and biases, BN γ and β (running stats are buffers)."""
    return int(sum(p.numel() for p in model.parameters()))


def layer_shapes(module_defs: list[dict[str, Any]], img_hw: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(channels, height, width) of every layer's output, from the cfg arithmetic."""
    return list(infer_shapes(module_defs, img_hw).layers)


def conv_flops_table(module_defs: list[dict[str, Any]], img_hw: tuple[int, int],
                     in_ch: dict[int, int] | None = None,
                     out_ch: dict[int, int] | None = None) -> dict[int, int]:
    """FLOPs per conv layer (each section's `flops`); in_ch/out_ch override the channel counts
    (for a mask)."""
    shapes = infer_shapes(module_defs, img_hw)
    out = {}
    for i, d in enumerate(module_defs[1:]):
        if not section_of(d).has_weights:
            continue
        cin = (in_ch or {}).get(i, shapes.prev(i)[0])
        cout = (out_ch or {}).get(i, shapes.of(i)[0])
        out[i] = section_of(d).flops(d, i, shapes, cin, cout)
    return out


def cfg_flops(module_defs: list[dict[str, Any]], img_hw: tuple[int, int]) -> int:
    return int(sum(conv_flops_table(module_defs, img_hw).values()))


def model_flops(model, img_hw: tuple[int, int]) -> int:
    """FLOPs of a Darknet model at input (h, w); convention in the module docstring."""
    return cfg_flops(model.module_defs, img_hw)


def channel_table(before: dict[int, int], after: dict[int, int]) -> str:
    """Text table: conv layer, channels before -> after, % kept."""
    lines = ["layer  before  after   kept"]
    for i in sorted(before):
        b, a = before[i], after.get(i, before[i])
        mark = "" if a == b else "  *"
        lines.append(f"{i:5d}  {b:6d}  {a:5d}  {100 * a / b:5.1f}%{mark}")
    return "\n".join(lines)


# ---- plots (OpenCV, no matplotlib; primitives in core.draw) --------------------------------

def plot_channels(before: dict[int, int], after: dict[int, int], path: str,
                  title: str = "channels kept per conv layer") -> None:
    """Bar chart: grey bar = channels before, blue bar = channels kept, one pair per conv."""
    import cv2
    layers = sorted(before)
    n = max(1, len(layers))
    bar = max(3, min(32, 1100 // n))
    # at least 640 px wide so the title and legend fit, however few layers there are
    W, H, left, bottom, top = max(640, 70 + bar * n + 20), 360, 60, 40, 30
    img = canvas(H, W)
    vmax = max(before.values()) if before else 1
    ph = H - bottom - top
    for k, i in enumerate(layers):
        x0 = left + k * bar
        for v, color in ((before[i], (200, 200, 200)), (after.get(i, before[i]), (180, 90, 30))):
            y = H - bottom - int(ph * v / vmax)
            cv2.rectangle(img, (x0, y), (x0 + bar - 2, H - bottom), color, -1)
        if n <= 40 or k % max(1, n // 20) == 0:
            put_text(img, str(i), (x0, H - bottom + 14), 0.3)
        if bar >= 24:  # room for the kept count above each bar
            put_text(img, str(after.get(i, before[i])), (x0, H - bottom - int(ph * after.get(i, before[i]) / vmax) - 4), 0.3)
    cv2.line(img, (left - 2, top), (left - 2, H - bottom), (0, 0, 0), 1)
    put_text(img, str(vmax), (5, top + 5))
    put_text(img, "0", (left - 15, H - bottom))
    put_text(img, title + "  (grey: before, blue: after; x: layer)", (left, 18), 0.45)
    save_png(img, path)


def plot_gamma_hist(gammas: Sequence[float] | np.ndarray, path: str, threshold: float | None = None,
                    bins: int = 60, title: str = "|gamma| histogram") -> None:
    """Histogram of |γ| (log-count bars), with the pruning threshold as a red line if given."""
    import cv2
    g = np.abs(np.asarray(gammas, dtype=np.float64).ravel())
    W, H, left, bottom, top = 640, 320, 50, 40, 30
    img = canvas(H, W)
    hi = float(g.max()) if g.size else 1.0
    hi = hi if hi > 0 else 1.0
    counts, edges = np.histogram(g, bins=bins, range=(0.0, hi))
    logc = np.log1p(counts)
    pw, ph = W - left - 20, H - bottom - top
    bw = pw / bins
    for k, v in enumerate(logc):
        y = H - bottom - int(ph * v / max(logc.max(), 1e-9))
        cv2.rectangle(img, (int(left + k * bw), y), (int(left + (k + 1) * bw) - 1, H - bottom),
                      (180, 90, 30), -1)
    if threshold is not None and 0 <= threshold <= hi:
        x = int(left + pw * threshold / hi)
        cv2.line(img, (x, top), (x, H - bottom), (0, 0, 255), 2)
        put_text(img, f"thr {threshold:.4g}", (min(x + 4, W - 90), top + 12))
    put_text(img, "0", (left, H - bottom + 15))
    put_text(img, f"{hi:.3g}", (W - 60, H - bottom + 15))
    put_text(img, f"{title}  (n={g.size}, log count)", (left, 18), 0.45)
    save_png(img, path)
