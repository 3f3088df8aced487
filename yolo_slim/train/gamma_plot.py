"""gamma_hist.png: the |γ| of the prunable BN layers per epoch of sparse training, one ridge per
epoch, with the epoch's dead channels / FLOPs if cut now / s written beside it."""
from __future__ import annotations

import torch


class GammaHistory:
    """|γ| histograms per epoch, drawn as stacked ridgelines (TensorBoard's histogram view)
    into a plain PNG: the first epoch at the back (top), the latest in front (bottom)."""

    def __init__(self, bins: int = 60):
        self.bins = bins
        self.epochs: list[int] = []
        self.values: list[torch.Tensor] = []

        self.notes: list[str] = []

    def add(self, epoch: int, abs_gamma: torch.Tensor, note: str = "") -> None:
        self.epochs.append(epoch)
        self.values.append(abs_gamma.float().cpu())
        self.notes.append(note)

    def state(self) -> dict:
        return {"epochs": list(self.epochs), "values": [v.clone() for v in self.values],
                "notes": list(self.notes)}

    def load_state(self, state: dict) -> None:
        self.epochs, self.values = list(state["epochs"]), list(state["values"])
        self.notes = list(state.get("notes", [""] * len(self.epochs)))

    def draw(self, path: str, title: str = "|gamma| of prunable BN layers per epoch") -> None:
        import cv2
        import numpy as np

        if not self.values:
            return
        hi = max(float(v.max()) for v in self.values) or 1.0
        hists = [torch.histc(v, self.bins, 0.0, hi).numpy() for v in self.values]
        notes = any(self.notes)  # a right-hand column for them, clear of the ridges
        W, left, right, top, ridge = 760 + (250 if notes else 0), 60, 20 + (250 if notes else 0), 40, 70
        step = max(8, min(30, 360 // len(hists)))
        H = top + ridge + step * (len(hists) - 1) + 50
        img = np.full((H, W, 3), 255, np.uint8)
        xs = np.linspace(left, W - right, self.bins)
        peak = max(h.max() for h in hists) or 1.0
        for k, h in enumerate(hists):
            base = top + ridge + step * k
            ys = base - (np.sqrt(h / peak) * ridge)  # sqrt keeps the small bins visible
            pts = np.stack([xs, ys], 1).astype(np.int32)
            poly = np.concatenate([[[left, base]], pts, [[W - right, base]]]).astype(np.int32)
            shade = int(230 - 170 * k / max(1, len(hists) - 1))
            cv2.fillPoly(img, [poly], (255, shade, shade // 2))  # later epochs darker
            cv2.polylines(img, [pts], False, (90, 40, 0), 1, cv2.LINE_AA)
            if k == 0 or k == len(hists) - 1 or k % max(1, len(hists) // 6) == 0:
                cv2.putText(img, f"ep {self.epochs[k]}", (4, base), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4, (0, 0, 0), 1, cv2.LINE_AA)
                if self.notes[k]:  # e.g. dead channels, FLOPs if cut now, s
                    cv2.putText(img, self.notes[k], (W - right + 10, base - 3),
                                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 160), 1, cv2.LINE_AA)
        y = H - 25
        for frac in (0, 0.25, 0.5, 0.75, 1.0):
            x = int(left + frac * (W - right - left))
            cv2.line(img, (x, y - 4), (x, y), (0, 0, 0), 1)
            cv2.putText(img, f"{frac * hi:.3g}", (x - 12, y + 14), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, title, (left, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
        from yolo_slim.core.errors import atomic_write_bytes
        atomic_write_bytes(path, cv2.imencode(".png", img)[1].tobytes())
