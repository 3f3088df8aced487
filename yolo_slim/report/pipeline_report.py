"""REPORT.md for a pipeline run folder: baseline → sparse → pruned → fine-tuned, side by side.

  python -m yolo_slim.report.pipeline_report --run runs/demo --data data/shapes/shapes.data --img-size 320

For every stage found in the run folder: mAP@0.5 and mAP@0.5:0.95 on the valid list, params,
FLOPs (report.model_flops), size of the darknet .weights on disk, and onnxruntime CPU latency
(batch 1) of the exported ONNX, all stages timed interleaved in one run. Then the files in
<run>/export (FP32 and INT8) as they ship: mAP through onnxruntime, size, interleaved latency.
It opens with those files' speed-up over the baseline FP32 (timed in the same run as them)
beside the FLOPs reduction.
Pictures and the commands that made the run (<run>/commands.txt, appended by `yolo-slim
pipeline`: make demo and the stage scripts) are linked in. The run folder's layout:
report/run_layout.py.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Sequence

import torch

from yolo_slim.core.cli import Parser, number, parse
from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes, cli_main
from yolo_slim.nn.model import Darknet
from yolo_slim.analysis.cost import count_params, model_flops
from yolo_slim.deploy.backends import MODULES
from yolo_slim.nn.weights import darknet_weights_bytes, load_model
from yolo_slim.report.run_layout import (BASELINE, BEST, COMMANDS, EXPORT, FINETUNE, LAST,
                                         MODEL_STAGES, PRUNED, REPORT, SPARSE)

# the stages' folders and files: report/run_layout.py (STAGES: the name bench/trees_table.py reads)
STAGES = MODEL_STAGES
PICTURES = [(f"{SPARSE}/gamma_hist.png", "|γ| of the prunable BN layers during sparse training"),
            (f"{PRUNED}/channels.png", "channels kept per layer"),
            (f"{PRUNED}/layers.png", "residual blocks removed (layer pruning)"),
            (f"{PRUNED}/latency.png", "per conv: share of FLOPs vs share of predicted latency, "
             "before and after (latency table)"),
            (f"{BASELINE}/results.png", "baseline training curves"),
            (f"{FINETUNE}/results.png", "fine-tuning curves")]


def find_stage_model(run: str, folder: str, kind: str) -> tuple[str | None, str] | None:
    """(cfg, weights) of a stage, or None when the stage has not run yet."""
    d = os.path.join(run, folder)
    pt = os.path.join(d, BEST)
    if kind == "run" and os.path.isfile(pt):
        return None, pt
    # a prune dir's files, or a baseline given as files (make slim: the user's own model)
    cfgs = glob.glob(os.path.join(d, "*.cfg"))
    weights = glob.glob(os.path.join(d, "*.weights")) or \
        [p for p in glob.glob(os.path.join(d, "*.pt")) if os.path.basename(p) not in (BEST, LAST)]
    if len(cfgs) == 1 and len(weights) == 1:
        return cfgs[0], weights[0]
    return None


def stage_latency(models: dict[str, Darknet], img_size: int, rounds: int = 30,
                  runtime: str = "onnxruntime") -> dict[str, dict]:
    """`runtime`'s CPU latency at batch 1 of every stage's model, timed interleaved in one run
    (deploy/ort_latency.models_latency): timed one after another on a busy machine, a stage
    identical in shape to the baseline once came out at 41% of its latency."""
    from yolo_slim.deploy.ort_latency import models_latency
    return models_latency(models, (img_size, img_size), 1, os.cpu_count(), rounds, 5,
                          ref=next(iter(models)), runtime=runtime)


def measure_stage(model: Darknet, loader: Any, img_size: int,
                  reference: Darknet | None = None) -> dict[str, Any]:
    from yolo_slim.eval.evaluate import evaluate
    m = evaluate(model, loader, progress=False, reference=reference)
    return {"map50": float(m["map50"]), "map": float(m["map"]), "params": count_params(model),
            "flops": model_flops(model, (img_size, img_size)),
            "size_mb": len(darknet_weights_bytes(model)) / 2 ** 20}


def score_names(agreement: bool) -> tuple[str, str]:
    """Column names: agreement is never shown as accuracy."""
    return ("agreement@0.5", "agreement@0.5:0.95") if agreement else ("mAP@0.5", "mAP@0.5:0.95")


def format_table(rows: list[tuple[str, dict[str, Any]]], agreement: bool = False) -> str:
    base = rows[0][1]
    a, b = score_names(agreement)
    out = [f"| stage | {a} | {b} | params | FLOPs | .weights size | CPU latency (b1), "
           "median (p25-p75) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows:
        rel = lambda k: f" ({r[k] / base[k]:.0%})" if name != rows[0][0] else ""  # noqa: E731
        t = r["latency"]
        lat = f"{t['median_ms']:.1f} ms ({t['p25_ms']:.1f}-{t['p75_ms']:.1f})" + \
            (f" ({t['ratio_median']:.0%})" if name != rows[0][0] else "")
        out.append(f"| {name} | {r['map50']:.3f} | {r['map']:.3f} | {r['params'] / 1e6:.3f} M{rel('params')} "
                   f"| {r['flops'] / 1e9:.3f} G{rel('flops')} | {r['size_mb']:.2f} MB{rel('size_mb')} "
                   f"| {lat} |")
    return "\n".join(out)


def is_int8(path: str) -> bool:
    """Whether a shipped file computes in 8 bits: ONNX QDQ nodes, OpenVINO FakeQuantize (ncnn
    files are FP32: the project writes no INT8 ncnn)."""
    if path.endswith(".onnx"):
        import onnx
        return any(n.op_type == "DequantizeLinear" for n in onnx.load(path).graph.node)
    if path.endswith(".xml"):
        with open(path, encoding="utf-8", errors="replace") as f:
            return 'type="FakeQuantize"' in f.read()
    return False


def shipped_size(path: str) -> int:
    """Bytes of a shipped model: the file and the weights beside it (.bin of .xml / .param)."""
    from yolo_slim.deploy.backends import shipped_files as parts
    return sum(os.path.getsize(p) for p in parts(path) if os.path.isfile(p))


BASE_FP32 = "baseline FP32"  # the baseline exported to a temp file, timed with the shipped files


def shipped_files(run: str, data: str, rounds: int = 50, reference: Darknet | None = None,
                  baseline: Darknet | None = None, runtime: str = "onnxruntime") -> list[dict[str, Any]]:
    """The files that ship for `runtime` (<run>/export/*.onnx, .xml or .param, FP32 before INT8), each scored by evaluate.py's
    ONNX path and timed interleaved in one run. With `baseline`, its FP32 export is timed in the
    same rounds and each file gets `speedup`: the median per-round ratio of the baseline's time
    to the file's (load from other processes hits both alike within a round)."""
    from yolo_slim.deploy.ort_bench import latency_stats, median_ratio, time_rounds
    from yolo_slim.deploy.backends import backend
    from yolo_slim.deploy.ort_latency import exported
    from yolo_slim.deploy.onnx_eval import OnnxDetector, evaluate_onnx
    suffix = backend(runtime).SUFFIX
    paths = sorted(((is_int8(p), p) for p in glob.glob(os.path.join(run, EXPORT, "*" + suffix))))
    if not paths:
        return []
    names = {f"{EXPORT}/{os.path.basename(p)}": p for _, p in paths}
    hw = OnnxDetector(paths[0][1]).img_hw
    with exported({} if baseline is None else {BASE_FP32: baseline}, hw, 1, runtime) as base:
        times = time_rounds({**names, **base}, hw, 1, rounds, 5, os.cpu_count())
    lat = latency_stats(times)  # ratio_median: to the first shipped file
    files = []
    for (int8, path), name in zip(paths, names):
        print(f"report: evaluating {name}", flush=True)
        m = evaluate_onnx(path, data, workers=0, progress=False, reference=reference)
        files.append({"name": name, "int8": int8, "map50": float(m["map50"]), "map": float(m["map"]),
                      "size": shipped_size(path), "latency": lat[name], "rounds": rounds,
                      "runtime": runtime})
        if base:
            files[-1]["speedup"] = median_ratio(times[BASE_FP32], times[name])
    return files


def headline(files: list[dict[str, Any]], flops_reduction: float, baseline: dict[str, Any],
             agreement: bool = False) -> list[str]:
    """REPORT.md's opening: the shipped files' speed-up over the baseline FP32 beside the FLOPs
    reduction; [] when the files were timed without a baseline."""
    if not files or "speedup" not in files[0]:
        return []
    a, b = score_names(agreement)
    out = ["**The files that ship vs the baseline FP32**", "",
           f"| shipped file | precision | speed-up vs baseline FP32 | FLOPs reduction | "
           f"speed-up ÷ FLOPs reduction | {a} | {b} |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in files:
        out.append(f"| `{f['name']}` | {'INT8' if f['int8'] else 'FP32'} | {f['speedup']:.2f}x | "
                   f"{flops_reduction:.2f}x | {f['speedup'] / flops_reduction:.2f} | "
                   f"{f['map50']:.3f} | {f['map']:.3f} |")
    return out + ["", f"Speed-up: {files[0]['runtime']} CPU, batch 1, the median per-round ratio of the "
                  f"baseline's time (exported to FP32 the same way) to the file's, all timed "
                  f"interleaved in one run ({files[0]['rounds']} rounds; \"The files that ship\" "
                  f"below). FLOPs reduction: baseline FLOPs / fine-tuned FLOPs (INT8 runs the same "
                  f"operations in 8 bits). A ratio above 1: faster than the FLOPs cut alone; below "
                  f"1: part of the cut did not become time. The baseline scores {a} "
                  f"{baseline['map50']:.3f}, {b} {baseline['map']:.3f}.", ""]


def deploy_table(files: list[dict[str, Any]], agreement: bool = False) -> list[str]:
    """shipped_files as REPORT.md's "The files that ship" section; [] when there are none."""
    from yolo_slim.deploy.ort_bench import cpu_isa
    if not files:
        return []
    rt = files[0]["runtime"]
    rows = [f"## The files that ship ({rt}, CPU)", "",
            f"mAP by `evaluate.py --onnx` (the same letterbox, NMS and mAP as above, run in "
            f"{rt}); latency at batch 1, all files interleaved in one run ({files[0]['rounds']} "
            f"rounds after 5 warm-up), median and 25-75th percentile; x = median per-round ratio to "
            f"the first file. CPU: {cpu_isa()['text']}.", "",
            "| file | weights | {} | {} | size | latency (b1) | x |".format(*score_names(agreement)),
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in files:
        t = f["latency"]
        rows.append(f"| `{f['name']}` | {'INT8' if f['int8'] else 'FP32'} | {f['map50']:.3f} | "
                    f"{f['map']:.3f} | {f['size'] / 2**20:.2f} MB ({f['size'] / files[0]['size']:.0%}) | "
                    f"{t['median_ms']:.1f} ms ({t['p25_ms']:.1f}-{t['p75_ms']:.1f}) | "
                    f"{t['ratio_median']:.2f} |")
    return rows + [""]


def cut_note(run: str) -> list[str]:
    """What the channel cut cost, from pruned/prune_report.json: the compact model vs the model
    it was cut from with the cut channels masked (raw head maps, one random input, zero-padded
    borders included) — with prox sparse training and --dead, the masked model is the sparse
    model itself and the gap is float rounding."""
    path = os.path.join(run, PRUNED, "prune_report.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rep = json.load(f)
    v, dead = rep.get("verification", {}), rep.get("dead")
    if "max_abs_vs_masked_unfolded" not in v:
        return []
    hw = "x".join(str(x) for x in v.get("img_size", []))
    what = (f"only channels sparse training left exactly dead (γ = β = 0): {dead['dead_deciders']} of "
            f"{dead['deciders']} (`prune_channels.py --dead`), so the masked model is the sparse "
            "model itself" if dead else "the cut channels' constant outputs folded into the next "
            "layers (exact away from zero-padded borders)")
    return [f"**The cut**: {what}. Max |Δ| of the raw head maps, pruned vs the model it was cut "
            f"from with those channels masked, on a random {hw} input, borders included: "
            f"{v['max_abs_vs_masked_unfolded']:.3g} (outputs up to {v['max_abs_output']:.3g}); "
            f"vs the folded model: {v['max_abs_vs_folded']:.3g}.", ""]


def build_report(run: str, data: str, img_size: int, batch_size: int = 16,
                 reference: tuple[str | None, str] | None = None, runtime: str = "onnxruntime") -> str:
    """reference (cfg, weights): score every stage by its agreement with that model's
    detections (label-free runs) instead of the validation labels."""
    from yolo_slim.eval.evaluate import validation_loader
    loader, dc = validation_loader(data, img_size, batch_size)
    ref = load_model(*reference).eval() if reference else None
    rows, models = [], {}
    for name, folder, kind in MODEL_STAGES:
        found = find_stage_model(run, folder, kind)
        if found is None:
            continue
        print(f"report: measuring {name} ({found[1]})", flush=True)
        models[name] = load_model(*found)
        with torch.no_grad():
            rows.append((name, measure_stage(models[name], loader, img_size, ref)))
    if not rows:
        raise YoloSlimError(f"{run}: no stage outputs found (run `make demo` or the stages first)")
    from yolo_slim.deploy.ort_bench import load_average
    load = load_average()
    lat = stage_latency(models, img_size, runtime=runtime)
    for name, r in rows:
        r["latency"] = lat[name]
    by_name = dict(rows)
    # the headline needs both ends of the chain: the baseline, and the fine-tuned model that ships
    ends = "baseline" in by_name and "fine-tuned" in by_name
    files = shipped_files(run, data, reference=ref, baseline=models["baseline"] if ends else None,
                          runtime=runtime)
    parts = [f"# yolo-slim pipeline report: `{run}`", ""]
    if ends:
        parts += headline(files, by_name["baseline"]["flops"] / by_name["fine-tuned"]["flops"],
                          by_name["baseline"], ref is not None)
    parts += [f"Data: `{data}` (valid list, {len(loader.dataset)} images), {img_size} px. "
              f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}. "
              f"Percentages are relative to the baseline. Latency: {runtime}, CPU, batch 1, "
              "every stage's model timed interleaved in one run (30 rounds after 5 warm-up), median "
              "with its 25th-75th percentile; the latency percentage is the median per-round ratio "
              f"to the baseline (load average {load} when timing started). Inputs letterboxed "
              "(`--preprocess letterbox`, the training default).", ""]
    if ref is not None:
        parts += [f"**Scores are agreement, not accuracy**: `{data}` has no labels; every model "
                  f"is scored against the detections (score >= 0.25) of `{reference[1]}` on the "
                  "same images (`evaluate.py --reference`). That model agrees with itself at "
                  "1.000.", ""]
    parts += [format_table(rows, ref is not None), ""]
    parts += cut_note(run)
    parts += deploy_table(files, ref is not None)
    for rel, caption in PICTURES:
        if os.path.isfile(os.path.join(run, rel)):
            parts += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    cmds = os.path.join(run, COMMANDS)
    if os.path.isfile(cmds):
        with open(cmds) as f:
            parts += ["## Commands that produced this run", "", "```bash", f.read().strip(), "```", ""]
    return "\n".join(parts)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m yolo_slim.report.pipeline_report", description=__doc__)
    p.add_argument("--run", required=True, help="the pipeline's run folder")
    p.add_argument("--data", required=True)
    p.add_argument("--img-size", type=number(int, min=1), default=320)
    p.add_argument("--output", help=f"default: <run>/{REPORT}")
    p.add_argument("--reference", help="score agreement with this model's detections (label-free)")
    p.add_argument("--reference-cfg", help="cfg of --reference (optional for a .pt)")
    p.add_argument("--runtime", choices=list(MODULES), default="onnxruntime",
                   help="time the stages and score/time the shipped files of this runtime")
    a = parse(p, argv)
    if a is None:  # --help
        return 0
    text = build_report(a.run, a.data, a.img_size,
                        reference=(a.reference_cfg, a.reference) if a.reference else None,
                        runtime=a.runtime)
    out = a.output or os.path.join(a.run, REPORT)
    atomic_write_bytes(out, text.encode())
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
