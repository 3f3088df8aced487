"""The shipped files on every runtime (issue 29): a baseline and a slim model exported by
export.py to onnxruntime, OpenVINO and ncnn, FP32 and INT8 where the runtime has it, each scored
by evaluate.py through the same letterbox, NMS and mAP (and agreement with the torch model), and
the files of each runtime timed interleaved in one run (deploy/ort_bench.time_rounds) at each
batch (one runtime at a time: an idle OpenVINO or ncnn thread pool spins after a run and would
take the cores from the next file of another runtime).

  python bench/runtimes_bench.py --model base:CFG:WEIGHTS --model slim:CFG:WEIGHTS \
      --img-size 416 --data D.data --calib-data D.data [--batches 1 8] [--rounds 30] \
      [--work runs/runtimes] --out result.md

Speed-ups are per runtime: a file against the first model's FP32 file on the same runtime, the
median over rounds of the per-round ratio (load moves both alike within a round).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yolo_slim.deploy.ort_bench import cpu_isa, median_ratio, time_rounds  # noqa: E402

PY = sys.executable
# (runtime, --format, file suffix, INT8 available)
FILES = [("onnxruntime", "onnx", ".onnx", True), ("openvino", "openvino", ".xml", True),
         ("ncnn", "ncnn", ".ncnn.param", False)]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def cfg_flag(flag: str, cfg: str) -> list[str]:
    return [flag, cfg] if cfg else []  # a yolo-slim .pt carries its cfg


def export_all(name: str, cfg: str, weights: str, a: argparse.Namespace) -> dict[str, str]:
    """{runtime/precision: path} of every file of one model, exported unless already there."""
    out = {}
    for rt, fmt, suffix, int8 in FILES:
        for prec in ("fp32", "int8") if int8 else ("fp32",):
            path = os.path.join(a.work, f"{name}{'.int8' if prec == 'int8' else ''}{suffix}")
            if not os.path.exists(path) or a.refresh:
                cmd = [PY, "export.py", *cfg_flag("--cfg", cfg), "--weights", weights, "--format", fmt,
                       "--img-size", str(a.img_size), "--output", path]
                if prec == "int8":
                    cmd += ["--int8", "--calib-data", a.calib_data, "--calib-images", str(a.calib_images)]
                run(cmd)
            out[f"{rt}/{prec}"] = path
    return out


def score(path: str | None, cfg: str, weights: str, a: argparse.Namespace, tag: str) -> dict:
    """evaluate.py's metrics of a file (or of the torch model when path is None), with agreement
    to the torch model itself."""
    od = os.path.join(a.work, "eval", tag)
    cmd = [PY, "evaluate.py", "--data", a.data, "--img-size", str(a.img_size), "--output-dir", od,
           "--batch-size", "8"]
    cmd += ["--onnx", path] if path else [*cfg_flag("--cfg", cfg), "--weights", weights, "--device", "cpu"]
    if a.agreement:
        cmd += ["--reference", weights, *cfg_flag("--reference-cfg", cfg)]
    run(cmd)
    with open(os.path.join(od, "metrics.json")) as f:
        return json.load(f)


def table(models: dict, files: dict, scores: dict, times: dict, a: argparse.Namespace) -> list[str]:
    first = next(iter(models))
    what = "agreement with the torch model" if a.agreement else "labels"
    rows = [f"| model | runtime | precision | mAP@0.5 | mAP@0.5:0.95 | Δ mAP@0.5 vs torch | "
            + " | ".join(f"b{b} ms | b{b} speed-up" for b in a.batches) + " |",
            "| --- | --- | --- | --- | --- | --- | " + " | ".join("--- | ---" for _ in a.batches) + " |"]
    for m in models:
        t = scores[(m, "torch")]
        rows.append(f"| {m} | torch | fp32 | {t['map50']:.4f} | {t['map']:.4f} | — | "
                    + " | ".join("— | —" for _ in a.batches) + " |")
        for key, path in files[m].items():
            rt, prec = key.split("/")
            s = scores[(m, key)]
            cells = []
            for b in a.batches:
                tb = times[b]
                ref = tb[f"{first}:{rt}/fp32"]
                mine = tb[f"{m}:{key}"]
                cells.append(f"{statistics.median(mine):.2f} | {1 / median_ratio(mine, ref):.2f}x")
            rows.append(f"| {m} | {rt} | {prec} | {s['map50']:.4f} | {s['map']:.4f} | "
                        f"{s['map50'] - t['map50']:+.4f} | " + " | ".join(cells) + " |")
    return [f"Scored on `{a.data}` ({what}), {a.img_size}x{a.img_size}; latency: {a.threads} threads, "
            f"the files of one runtime timed interleaved in one run per batch ({a.rounds} rounds; "
            f"speed-up against {first}'s FP32 file on the same runtime). CPU: {cpu_isa()['text']}.",
            ""] + rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", action="append", required=True, help="NAME:CFG:WEIGHTS (first = reference)")
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--data", required=True)
    p.add_argument("--calib-data", required=True)
    p.add_argument("--calib-images", type=int, default=100)
    p.add_argument("--agreement", action="store_true", help="score against the torch model, not labels")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/runtimes")
    p.add_argument("--refresh", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    models = dict((m.split(":")[0], m.split(":")[1:]) for m in a.model)
    files = {m: export_all(m, cfg, w, a) for m, (cfg, w) in models.items()}
    scores = {}
    for m, (cfg, w) in models.items():
        scores[(m, "torch")] = score(None, cfg, w, a, f"{m}-torch")
        for key, path in files[m].items():
            scores[(m, key)] = score(path, cfg, w, a, f"{m}-{key.replace('/', '-')}")
    # one interleaved run per runtime and batch: an idle OpenVINO or ncnn (OpenMP) pool spins
    # after its run and would take the cores from the next file of another runtime
    times: dict[int, dict[str, list[float]]] = {b: {} for b in a.batches}
    for rt, _, _, _ in FILES:
        group = {f"{m}:{k}": p for m in files for k, p in files[m].items() if k.startswith(rt + "/")}
        for b in a.batches:
            times[b].update(time_rounds(group, (a.img_size, a.img_size), b, a.rounds, 3, a.threads))
    text = "\n".join(table(models, files, scores, times, a)) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
