r"""Unstructured magnitude pruning, for comparison with channel pruning.

  python -m yolo_slim.tools.unstructured --cfg c.cfg --weights w.weights --amount 0.5 --output-dir runs/u

Global magnitude pruning over every conv kernel (torch.nn.utils.prune.global_unstructured with
L1Unstructured, then prune.remove to make the zeros permanent): the `amount` is turned into an
integer count round(amount x total) first, so exactly that many weights are zeroed (torch picks
them by top-k of |w| over all convs together; ties at the cut are broken by top-k's order). BN
parameters and conv biases are left alone: they are a rounding error of the size.

What it reports, and why: zeroed weights make the darknet file *compressible* (gzip of the
.weights vs the dense one), but a dense conv kernel full of zeros costs the same multiply-adds, so
latency stays that of the dense model (PyTorch and onnxruntime, both dense kernels on CPU). The
same run prunes channels to --structured-flops x FLOPs (slim strategy, |γ|) from the same weights,
whose latency does drop: removed channels are removed work.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.nn.utils import prune

from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main
from yolo_slim.nn.model import Darknet, check_img_size, conv_layers
from yolo_slim.analysis.cost import model_flops


def magnitude_prune(model: Darknet, amount: float) -> dict[str, Any]:
    """Zero the round(amount x total) smallest-|w| conv weights of `model` (in place); returns the
    sparsity report: requested count, zeros counted after, and per-layer sparsity."""
    if not 0.0 <= amount <= 1.0 or math.isnan(amount):
        raise YoloSlimError(f"--amount must be in [0, 1], got {amount}")
    convs = [(i, m.conv) for i, m in conv_layers(model)]
    total = sum(c.weight.numel() for _, c in convs)
    k = math.floor(amount * total + 0.5)
    if k:
        prune.global_unstructured([(c, "weight") for _, c in convs],
                                  pruning_method=prune.L1Unstructured, amount=k)
        for _, c in convs:
            prune.remove(c, "weight")
    per_layer = {i: {"zeros": int((c.weight == 0).sum()), "total": c.weight.numel()} for i, c in convs}
    zeros = sum(v["zeros"] for v in per_layer.values())
    return {"amount": amount, "total": total, "requested_zeros": k, "zeros": zeros,
            "sparsity": zeros / total if total else 0.0,
            "per_layer": {i: {**v, "sparsity": v["zeros"] / v["total"]} for i, v in per_layer.items()}}


@torch.no_grad()
def latency(model: Darknet, hw: tuple[int, int], runs: int = 20, warmup: int = 3,
            onnx: bool = True, threads: int | None = None) -> dict[str, float]:
    """Median ms per batch-1 forward: torch (eval, no_grad) and onnxruntime (checked export)."""
    from yolo_slim.deploy.export import export_onnx
    from yolo_slim.deploy.runtime import median_ms, ort_session
    model = copy.deepcopy(model).eval()
    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    out = {"torch_ms": median_ms(lambda: model(x), runs, warmup)}
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.onnx")
            export_onnx(model, path, img_size=hw, check_batch=1)
            sess = ort_session(path, threads)
            feed = {"images": x.numpy()}
            out["onnxruntime_ms"] = median_ms(lambda: sess.run(None, feed), runs, warmup)
    return out


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=6, mtime=0))


def run(cfg: str | None, weights: str, out_dir: str, amount: float,
        img_size: int | None = None, structured_flops: float | None = 0.5, runs: int = 20,
        warmup: int = 3, onnx: bool = True, threads: int | None = None, log=print) -> dict[str, Any]:
    from yolo_slim.darknet.cfg import net_size, save_cfg
    from yolo_slim.prune.channels import PruneOptions, prune_model
    from yolo_slim.prune.outputs import check_output_dir
    from yolo_slim.nn.weights import darknet_weights_bytes, load_model
    model = load_model(cfg, weights).eval()
    stem = os.path.splitext(os.path.basename(cfg or weights))[0]
    check_output_dir(out_dir, stem, [cfg, weights])
    hw = check_img_size(model.module_defs, (img_size,) * 2) if img_size else net_size(model.module_defs)
    sparse = copy.deepcopy(model)
    rep: dict[str, Any] = {"sparsity": magnitude_prune(sparse, amount), "img_size": list(hw)}
    dense_bytes, sparse_bytes = darknet_weights_bytes(model), darknet_weights_bytes(sparse)
    save_cfg(sparse.module_defs, os.path.join(out_dir, f"{stem}.cfg"))
    atomic_write_bytes(os.path.join(out_dir, f"{stem}.weights"), sparse_bytes)
    rep["size_bytes"] = {"dense": len(dense_bytes), "dense_gzip": gzip_size(dense_bytes),
                         "unstructured": len(sparse_bytes), "unstructured_gzip": gzip_size(sparse_bytes)}
    models = {"dense": model, f"unstructured_{amount:g}": sparse}
    if structured_flops:
        try:
            res = prune_model(model, PruneOptions(strategy="slim", target_flops=structured_flops,
                                                  img_size=hw), check=False)
            models[f"structured_flops_{structured_flops:g}"] = res.compact
            b = darknet_weights_bytes(res.compact)
            rep["size_bytes"]["structured"], rep["size_bytes"]["structured_gzip"] = len(b), gzip_size(b)
        except YoloSlimError as e:
            log(f"structured comparison skipped: {e}")
    torch_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rep["latency"] = {}
        for name, m in models.items():
            log(f"timing {name} ...")
            rep["latency"][name] = {"flops": model_flops(m, hw),
                                    **latency(m, hw, runs, warmup, onnx, threads)}
    finally:
        torch.set_num_threads(torch_threads)
    rep["files"] = [f"{stem}.cfg", f"{stem}.weights"]
    atomic_write_bytes(os.path.join(out_dir, "unstructured_report.json"),
                       json.dumps(rep, indent=1).encode())
    return rep


def summary_text(rep: dict[str, Any]) -> str:
    s, z = rep["sparsity"], rep["size_bytes"]
    lines = [f"zeroed {s['zeros']:,} of {s['total']:,} conv weights: sparsity {s['sparsity']:.6f} "
             f"(requested {s['amount']:g} -> {s['requested_zeros']:,})",
             f".weights size: dense {z['dense']:,} B (gzip {z['dense_gzip']:,}), unstructured "
             f"{z['unstructured']:,} B (gzip {z['unstructured_gzip']:,})"
             + (f", structured {z['structured']:,} B (gzip {z['structured_gzip']:,})"
                if "structured" in z else ""),
             "model                      GFLOPs   torch ms   onnxruntime ms"]
    for name, v in rep["latency"].items():
        ort = f"{v['onnxruntime_ms']:14.2f}" if "onnxruntime_ms" in v else "             -"
        lines.append(f"{name:25s} {v['flops'] / 1e9:7.3f} {v['torch_ms']:10.2f} {ort}")
    return "\n".join(lines)


@dataclass
class UnstructuredFlags:
    """The flags of python -m yolo_slim.tools.unstructured besides --cfg/--weights/--output-dir."""
    amount: float | None = field(default=None, metadata={
        "type": float, "min": 0, "max": 1, "help": "fraction of conv weights to zero"})
    img_size: int | None = field(default=None, metadata={"type": int, "min": 1})
    structured_flops: float = field(default=0.5, metadata={
        "min": 0, "max": 1, "help": "0 = no structured model"})
    runs: int = field(default=20, metadata={"min": 1})
    warmup: int = field(default=3, metadata={"min": 0})
    onnx: bool = True
    threads: int | None = field(default=None, metadata={
        "type": int, "min": 1, "help": "torch and onnxruntime threads"})


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    from yolo_slim.core.cli import add_dataclass_args, module_parser, parse, write_resolved
    p = module_parser("python -m yolo_slim.tools.unstructured", __doc__, data=False)
    add_dataclass_args(p, UnstructuredFlags, required=("amount",))
    a = parse(p, argv)
    if a is None:
        return 0
    rep = run(a.cfg, a.weights, a.output_dir, a.amount, a.img_size, a.structured_flops, a.runs,
              a.warmup, a.onnx, a.threads)
    text = summary_text(rep)
    print(text)
    atomic_write_bytes(os.path.join(a.output_dir, "unstructured_summary.txt"), (text + "\n").encode())
    write_resolved(os.path.join(a.output_dir, "args.json"), a)
    print("wrote", os.path.join(a.output_dir, "unstructured_report.json"), "and unstructured_summary.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
