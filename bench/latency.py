#!/usr/bin/env python3
"""CPU latency of an original and a pruned model: PyTorch (eval, no_grad) vs onnxruntime
(CPUExecutionProvider), per input size and batch, median of repeated runs after warm-up, with
FLOPs beside each row so the speed-up can be compared with the FLOPs reduction.

  python bench/latency.py --cfg cfg/yolov3-tiny.cfg [--weights W] \
      [--pruned-cfg P.cfg --pruned-weights P.weights] --sizes 320 416 608 --batches 1 4 8 \
      --runs 10 --warmup 3 --out bench/results/latency.md

Without --pruned-cfg, a pruned stand-in is derived: every conv the channel graph calls prunable
("slim" strategy) keeps --shrink of its filters (rounded up to a multiple of 8, so shortcut
groups and grouped routes stay consistent); the convs feeding [yolo] are kept. Weights are random
where none are given (latency does not depend on the values).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main  # noqa: E402
from yolo_slim.deploy.export import export_onnx  # noqa: E402
from yolo_slim.deploy.runtime import median_ms, ort_session  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402
from yolo_slim.analysis.cost import model_flops  # noqa: E402
from yolo_slim.nn.weights import load_model  # noqa: E402


def shrunk_model(cfg: str, ratio: float) -> Darknet:
    from yolo_slim.analysis.graph import prunable_convs
    defs = parse_cfg(cfg)
    for i in prunable_convs(defs, "slim"):
        d = defs[i + 1]
        d["filters"] = str(max(8, 8 * math.ceil(int(d["filters"]) * ratio / 8)))
    return Darknet(defs)


def bench_model(model: Darknet, sizes, batches, runs, warmup, threads, tmp) -> list[dict]:
    model.eval()
    rows = []
    for s in sizes:
        path = os.path.join(tmp, f"m{s}.onnx")
        export_onnx(model, path, img_size=s)
        sess = ort_session(path, threads)
        for b in batches:
            x = torch.rand(b, 3, s, s)
            xn = x.numpy()
            with torch.no_grad():
                t_ms = median_ms(lambda: model(x), runs, warmup)
            o_ms = median_ms(lambda: sess.run(None, {"images": xn}), runs, warmup)
            rows.append(dict(size=s, batch=b, flops=model_flops(model, (s, s)), torch_ms=t_ms, ort_ms=o_ms))
            print(f"  {s}x{s} b{b}: torch {t_ms:.1f} ms, onnxruntime {o_ms:.1f} ms", flush=True)
    return rows


def table(orig: list[dict], pruned: list[dict], names: tuple[str, str]) -> str:
    out = ["| model | input | batch | GFLOPs/img | FLOPs ÷ | torch ms | torch speed-up | "
           "ORT ms | ORT speed-up | ORT img/s |", "|" + "---|" * 10]
    for o, p in zip(orig, pruned):
        for name, r in ((names[0], o), (names[1], p)):
            fx, tx, ox = o["flops"] / r["flops"], o["torch_ms"] / r["torch_ms"], o["ort_ms"] / r["ort_ms"]
            out.append(f"| {name} | {r['size']} | {r['batch']} | {r['flops'] / 1e9:.2f} | {fx:.2f}× | "
                       f"{r['torch_ms']:.1f} | {tx:.2f}× | {r['ort_ms']:.1f} | {ox:.2f}× | "
                       f"{r['batch'] / r['ort_ms'] * 1e3:.1f} |")
    return "\n".join(out)


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True)
    p.add_argument("--weights")
    p.add_argument("--pruned-cfg")
    p.add_argument("--pruned-weights")
    p.add_argument("--shrink", type=float, default=0.5, help="filters kept by the stand-in")
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 608])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ORT threads")
    p.add_argument("--machine", default="", help="machine description for the results file")
    p.add_argument("--out", default="bench/results/latency.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    orig = load_model(a.cfg, a.weights)
    if a.pruned_cfg:
        pruned, how = load_model(a.pruned_cfg, a.pruned_weights), f"`{a.pruned_cfg}`"
    else:
        if a.pruned_weights:
            raise YoloSlimError("--pruned-weights needs --pruned-cfg")
        pruned = shrunk_model(a.cfg, a.shrink)
        how = (f"stand-in: every prunable conv of `{a.cfg}` keeps {a.shrink:.0%} of its filters "
               "(rounded up to 8), heads kept, random weights -- not a trained pruned model")
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        print("original:")
        ro = bench_model(orig, a.sizes, a.batches, a.runs, a.warmup, a.threads, tmp)
        print("pruned:")
        rp = bench_model(pruned, a.sizes, a.batches, a.runs, a.warmup, a.threads, tmp)
    import onnxruntime
    md = ["# CPU latency: PyTorch vs onnxruntime, original vs pruned\n",
          f"- command: `python bench/latency.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
          f"- date: {datetime.date.today().isoformat()}; machine: {a.machine or platform.processor() or platform.machine()}"
          f" ({os.cpu_count()} CPUs visible, {a.threads} threads; 1-min load average "
          f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after"
          f"{' -- above the CPU count, timings are noisy' if max(load0, os.getloadavg()[0]) > os.cpu_count() else ''})",
          f"- torch {torch.__version__} (eval, no_grad), onnxruntime {onnxruntime.__version__} "
          f"(CPUExecutionProvider, intra-op threads {a.threads}); ONNX from `export_onnx` (BN folded, "
          "decoded `detections` output, dynamic batch, opset 18)",
          f"- median of {a.runs} runs after {a.warmup} warm-up runs, in ms per batch; torch runs the "
          "model as trained (BN not folded), onnxruntime the exported graph",
          f"- pruned model: {how}",
          "- GFLOPs/img: 2 x multiply-adds of the convs (`yolo_slim.analysis.cost`); ÷ and speed-up columns "
          "are original / this row\n", table(ro, rp, ("original", "pruned")), ""]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    atomic_write_bytes(a.out, "\n".join(md).encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    raise SystemExit(main())
