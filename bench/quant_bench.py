#!/usr/bin/env python3
"""Pruning and INT8 quantization alone and together: the demo's baseline and its pruned +
fine-tuned model, each as FP32 ONNX and INT8 ONNX, scored by evaluate.py's ONNX path on the
validation list (the files that ship, not the torch models), file sizes, and onnxruntime CPU
latency of all four files timed interleaved in one run.

  python bench/quant_bench.py --run runs/demo --data data/shapes/shapes.data --img-size 256 \
      --calib-images 100 --calib-method minmax --out bench/results/quantize.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys

import onnxruntime
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main  # noqa: E402
from yolo_slim.nn.weights import load_model  # noqa: E402
from yolo_slim.deploy.export import ExportOptions, export_onnx  # noqa: E402
from yolo_slim.deploy.ort_bench import cpu_isa, interleaved_latency, load_average  # noqa: E402
from yolo_slim.deploy.quantize import QuantOptions, export_int8  # noqa: E402
from yolo_slim.deploy.onnx_eval import evaluate_onnx  # noqa: E402
from yolo_slim.report.pipeline_report import find_stage_model  # noqa: E402

MODELS = [("baseline", "baseline", "run"), ("pruned+ft", "finetune", "files")]


def build(a: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Export FP32 + INT8 of each model into a.work; mAP of every file; parity reports."""
    files, maps, parity = {}, {}, {}
    for name, folder, kind in MODELS:
        found = find_stage_model(a.run, folder, kind)
        if found is None:
            raise YoloSlimError(f"{a.run}/{folder}: no model (run make demo first)")
        model = load_model(*found)
        if not a.no_torch:
            maps[f"{name} torch"] = torch_map(model, a)
        stem = os.path.join(a.work, name.replace("+", "_"))
        eo = ExportOptions(img_size=a.img_size)
        export_onnx(model, stem + ".onnx", eo)
        q = QuantOptions(calib_method=a.calib_method, calib_images=a.calib_images)
        parity[name] = export_int8(model, stem + ".int8.onnx", eo, a.data, q)
        for prec, path in (("FP32", stem + ".onnx"), ("INT8", stem + ".int8.onnx")):
            key = f"{name} {prec}"
            files[key] = path
            print(f"evaluating {key}", flush=True)
            m = evaluate_onnx(path, a.data, batch_size=16, workers=0, progress=False)
            maps[key] = (m["map50"], m["map"])
    return files, maps, parity


def torch_map(model, a: argparse.Namespace) -> tuple[float, float]:
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    from yolo_slim.eval.evaluate import evaluate
    dc = parse_data_file(a.data)
    loader, _ = create_dataloader(dc.valid, a.img_size, 16, augment=False, workers=0,
                                  shuffle=False, nc=dc.classes, verbose=False)
    m = evaluate(model, loader, progress=False, names=dc.names)
    return m["map50"], m["map"]


def table(files, maps, lat, base_bytes) -> list[str]:
    rows = ["| model | weights | mAP@0.5 | mAP@0.5:0.95 | file | ORT ms median (p25-p75) | "
            "x FP32 same model | x baseline FP32 |", "|---|---|---|---|---|---|---|---|"]
    for key, path in files.items():
        name, prec = key.rsplit(" ", 1)
        size = os.path.getsize(path)
        lt = lat[key]
        rows.append(f"| {name} | {prec} | {maps[key][0]:.3f} | {maps[key][1]:.3f} | "
                    f"{size / 2**20:.2f} MB ({size / base_bytes:.0%}) | {lt['median_ms']:.2f} "
                    f"({lt['p25_ms']:.2f}-{lt['p75_ms']:.2f}) | "
                    f"{lt['ratio_median'] / lat[name + ' FP32']['ratio_median']:.2f} | "
                    f"{lt['ratio_median']:.2f} |")
    return rows


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--data", default="data/shapes/shapes.data")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--calib-images", type=int, default=100)
    p.add_argument("--calib-method", default="minmax")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                   help="onnxruntime intra-op threads; each count is timed separately (one "
                        "thread is steadier on a shared machine)")
    p.add_argument("--work", help="folder for the ONNX files (default <run>/quant_bench)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch models' mAP")
    p.add_argument("--machine", default="", help="free text for the report (e.g. 'shared with 4 jobs')")
    p.add_argument("--out", default="bench/results/quantize.md")
    a = p.parse_args(argv)
    a.work = a.work or os.path.join(a.run, "quant_bench")
    os.makedirs(a.work, exist_ok=True)
    torch.set_num_threads(max(a.threads))
    files, maps, parity = build(a)
    load0 = load_average()
    lats = {(b, t): interleaved_latency(files, (a.img_size, a.img_size), b, a.rounds, 5, t,
                                        ref="baseline FP32")
            for t in a.threads for b in a.batches}
    load1 = load_average()
    base_bytes = os.path.getsize(files["baseline FP32"])
    isa = cpu_isa()
    lines = [f"- command: `python bench/quant_bench.py {shlex.join(argv or sys.argv[1:])}`",
             f"- date: {datetime.date.today()}; machine: {isa['text']}"
             + (f"; {a.machine}" if a.machine else ""),
             f"- onnxruntime {onnxruntime.__version__} CPUExecutionProvider, intra-op threads "
             f"{' and '.join(map(str, a.threads))}; 1-min load average {load0.split()[0]} before the timing, "
             f"{load1.split()[0]} after",
             f"- INT8: QDQ, uint8 activations / int8 per-channel weights, {a.calib_method} "
             f"calibration on {a.calib_images} training images, decode tail in float",
             "- mAP: evaluate.py's ONNX path (letterbox, NMS conf 0.001 IoU 0.6, COCO 101-point) "
             "on the whole validation list",
             f"- latency: the four files interleaved, {a.rounds} rounds after 5 warm-up rounds, "
             "ms per batch; the x columns are medians of the per-round ratios", ""]
    for (b, t), lat in lats.items():
        lines += [f"### batch {b}, {t} thread{'s' if t > 1 else ''}", ""]
        lines += table(files, maps, lat, base_bytes) + [""]
    if not a.no_torch:
        lines += ["The torch models (eval.evaluate, same loader) for comparison with the FP32 "
                  "rows: " + "; ".join(f"{k.rsplit(' ', 1)[0]} {v[0]:.4f} / {v[1]:.4f}"
                                       for k, v in maps.items() if k.endswith(" torch")), ""]
    lines += ["INT8 vs FP32 parity at export (on the calibration images):", ""]
    for name, r in parity.items():
        pr = r["parity"]
        f = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
        lines.append(f"- {name}: {f(pr['match_rate'], '.1%')} of {pr['ref_detections']} FP32 "
                     f"detections (score > {pr['conf']}) found again, mean IoU "
                     f"{f(pr['mean_iou'], '.3f')}, score |delta| max {pr['score_delta_max']:.3f}; "
                     f"calibration {r['calib_seconds']} s")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(a.out, text.encode())
    atomic_write_bytes(os.path.splitext(a.out)[0] + ".json", json.dumps(
        {"maps": maps, "latency": {f"b{b}_t{t}": v for (b, t), v in lats.items()}, "isa": isa,
         "sizes": {k: os.path.getsize(v) for k, v in files.items()}}, indent=1).encode())
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
