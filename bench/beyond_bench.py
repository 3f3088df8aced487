#!/usr/bin/env python3
"""Beyond one-shot slimming, measured on the synthetic shapes set (bench/results/beyond.md).

  # the demo's baseline and sparse stages first (~15 min on 2 cores), then the comparison:
  make sparse RUN=runs/beyond
  python bench/beyond_bench.py --work runs/beyond --data data/shapes/shapes.data \
      --baseline runs/beyond/baseline --sparse runs/beyond/sparse --img-size 256 \
      --out bench/results/beyond.md

1. data: --data, or the synthetic set (--n-train / --n-valid images at --img-size) made in
   <work>/shapes;
2. baseline: the finished run folder --baseline; without one, cfg/demo.cfg is trained from scratch
   for --base-epochs with the demo recipe into <work>/baseline;
3. at the same FLOPs target (--target-flops of the baseline) and the same fine-tuning budget
   (--ft-epochs epochs each with --ft-kd distillation from the baseline, the demo recipe):
     bn / l1 / rank:  one-shot prune_channels --target-flops, then fine-tune;
     bn+sr:           (with --sparse, the run folder of sparsity training from the baseline)
                      bn on the sparse-trained model: what the pipeline does; it had the
                      sparsity epochs on top of the budget;
     sens:            yolo_slim.tools.sensitivity ratios for the target under --sens-max-drop, then
                      prune_channels --layer-ratios, then fine-tune;
     iter3:           yolo_slim.tools.iterate, 3 rounds of target^(1/3) with ft-epochs/3 epochs each;
     iter3-nowarmup:  the same without the recipe's warm-up epoch in each round;
     dense:           the control, the same fine-tuning of the unpruned baseline;
   mAP@0.5 and mAP@0.5:0.95 on the whole validation list, after pruning and after fine-tuning;
4. latency (batch 1, one thread, torch and onnxruntime): dense vs 50% unstructured vs 50%-FLOPs
   structured, via yolo_slim.tools.unstructured at --latency-size.
Every phase caches its result in <work>/results.json, so an interrupted run continues.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from yolo_slim.train.distill import KD_MODES  # noqa: E402


def demo_recipe() -> dict:
    """The TrainConfig fields the demo's recipe sets off their defaults (recipes/demo.json's
    section "train": the short schedule of every training stage), read by the recipe reader
    every command uses, so the benchmark trains and fine-tunes like `make demo`."""
    from yolo_slim.core.cli import Parser, parse
    from yolo_slim.train.engine import TrainConfig
    p = Parser()
    TrainConfig.add_args(p)
    recipe = os.path.join(ROOT, "recipes", "demo.json") + ":train"
    given, default = vars(parse(p, ["--config", recipe])), vars(parse(p, []))
    return {k: v for k, v in given.items() if v != default[k] and k != "config"}


def metrics_fn(data: str, img: int):
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    from yolo_slim.eval.evaluate import evaluate
    dc = parse_data_file(data)
    loader, _ = create_dataloader(dc.valid, img, 16, augment=False, workers=0, nc=dc.classes,
                                  verbose=False)
    batches = list(loader)

    def fn(model) -> dict:
        r = evaluate(model, batches, progress=False, nc=dc.classes)
        return {"map50": round(float(r["map50"]), 4), "map": round(float(r["map"]), 4)}
    return fn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/beyond")
    p.add_argument("--cfg", default="cfg/demo.cfg")
    p.add_argument("--data", default="", help="darknet .data file (default: make one in --work)")
    p.add_argument("--baseline", default="", help="finished training run folder (default: train)")
    p.add_argument("--sparse", default="", help="run folder of sparsity training from --baseline")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-valid", type=int, default=200)
    p.add_argument("--base-epochs", type=int, default=20)
    p.add_argument("--ft-epochs", type=int, default=6)
    p.add_argument("--ft-kd", default="chen", choices=list(KD_MODES))
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--sens-ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--sens-max-drop", type=float, default=0.1)
    p.add_argument("--latency-size", type=int, default=320)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--out", default="bench/results/beyond.md")
    a = p.parse_args(argv)
    from yolo_slim.train import engine
    from yolo_slim.tools.iterate import IterateOptions, _finetune, run as iterate
    from yolo_slim.prune.channels import PruneOptions
    from yolo_slim.prune.pipeline import run_channels as prune
    from yolo_slim.analysis.cost import model_flops
    from yolo_slim.tools.sensitivity import SensitivityOptions, run as sensitivity
    from yolo_slim.data.synthetic import make_shapes_dataset
    from yolo_slim.tools.unstructured import run as unstructured
    from yolo_slim.nn.weights import export_run_model, load_model, read_checkpoint

    recipe = {**demo_recipe(), "batch_size": 16, "workers": 1, "seed": 0}
    w = a.work
    os.makedirs(w, exist_ok=True)
    res_path = os.path.join(w, "results.json")
    res = json.load(open(res_path)) if os.path.isfile(res_path) else {}

    def save():
        with open(res_path, "w") as f:
            json.dump(res, f, indent=1)
    data = a.data or os.path.join(w, "shapes", "shapes.data")
    if not os.path.isfile(data):
        make_shapes_dataset(os.path.dirname(data), a.n_train, a.n_valid, a.img_size, 0)
    bdir = a.baseline or os.path.join(w, "baseline")
    last = os.path.join(bdir, "last.pt")
    if not a.baseline and not (os.path.isfile(last)
                               and read_checkpoint(last)["epoch"] == a.base_epochs - 1):
        t = time.time()
        cfg_b = engine.TrainConfig(**{**recipe, "cfg": a.cfg, "data": data, "output_dir": bdir,
                                      "epochs": a.base_epochs, "img_size": a.img_size,
                                      "progress": False})
        torch.manual_seed(0)  # the initial weights, as train_sparse.py --seed 0 makes them
        engine.train(cfg_b, load_model(a.cfg, None), [])
        res["baseline_train_s"] = round(time.time() - t)
    stem = os.path.splitext(os.path.basename(a.cfg))[0]
    b_cfg, b_w = export_run_model(bdir, stem)
    metric = metrics_fn(data, a.img_size)
    hw = (a.img_size, a.img_size)
    base_model = load_model(b_cfg, b_w)
    full_flops = model_flops(base_model, hw)
    if "baseline" not in res:
        res["baseline"] = {**metric(base_model), "flops": full_flops}
        save()
    print("baseline", res["baseline"])
    ft = IterateOptions(epochs_per_round=a.ft_epochs, img_size=a.img_size, batch_size=16,
                        kd=a.ft_kd, train=recipe)
    teacher = base_model if a.ft_kd != "none" else None

    def finish(name: str, p_cfg: str, p_w: str, extra: dict) -> None:
        vd = os.path.join(w, name)
        pruned = load_model(p_cfg, p_w)
        t = time.time()
        td = _finetune(vd, p_cfg, p_w, data, ft, teacher, ())
        f_cfg, f_w = export_run_model(td, stem)
        tuned = load_model(f_cfg, f_w)
        res[name] = {"flops": model_flops(tuned, hw) / full_flops,
                     "params": sum(q.numel() for q in tuned.parameters()),
                     "pruned": metric(pruned), "finetuned": metric(tuned),
                     "ft_s": round(time.time() - t), **extra}
        save()
        print(name, res[name])

    for imp in ("bn", "l1", "rank"):
        if imp in res:
            continue
        pd = os.path.join(w, imp, "prune")
        prune(b_cfg, b_w, pd, PruneOptions(target_flops=a.target_flops, img_size=hw,
                                           importance=imp, rank_data=data, rank_batch_size=16),
              log=lambda *x: None)
        finish(imp, os.path.join(pd, f"{stem}.cfg"), os.path.join(pd, f"{stem}.weights"), {})
    if a.sparse and "bn+sr" not in res:
        s_cfg, s_w = export_run_model(a.sparse, stem)
        res["sparse_model"] = metric(load_model(s_cfg, s_w))
        pd = os.path.join(w, "bn_sr", "prune")
        prune(s_cfg, s_w, pd, PruneOptions(target_flops=a.target_flops, img_size=hw),
              log=lambda *x: None)
        finish("bn+sr", os.path.join(pd, f"{stem}.cfg"), os.path.join(pd, f"{stem}.weights"), {})
    if "sens" not in res:
        t = time.time()
        sd = os.path.join(w, "sens")
        s = sensitivity(b_cfg, b_w, data, os.path.join(sd, "analysis"), SensitivityOptions(
            ratios=a.sens_ratios, target_flops=a.target_flops, max_drop=a.sens_max_drop,
            img_size=a.img_size, eval_images=0, batch_size=16), log=lambda *x: None)
        sens_s = round(time.time() - t)
        ratios = {int(k): v for k, v in s["chosen"]["layers"].items()}
        pd = os.path.join(sd, "prune")
        prune(b_cfg, b_w, pd, PruneOptions(layer_ratios=ratios, img_size=hw), log=lambda *x: None)
        finish("sens", os.path.join(pd, f"{stem}.cfg"), os.path.join(pd, f"{stem}.weights"),
               {"analysis_s": sens_s, "unit_ratios": s["chosen"]["unit_ratios"],
                "units": s["units"]})
    # iter3 as the budget allows (the recipe's 1-epoch warm-up restarts every round), and the
    # same without warm-up: with 2-epoch rounds the warm-up is half of each round
    for name, train in (("iter3", recipe), ("iter3-nowarmup", {**recipe, "warmup_epochs": 0.0})):
        if name in res:
            continue
        t = time.time()
        opts = IterateOptions(rounds=3, per_round_flops=a.target_flops ** (1 / 3),
                              epochs_per_round=max(1, a.ft_epochs // 3), max_drop=1.0,
                              img_size=a.img_size, batch_size=16, kd=a.ft_kd, train=train)
        s = iterate(b_cfg, b_w, data, os.path.join(w, name.replace("-", "_")), opts, log=print,
                    metric=lambda m: metric(m)["map50"])
        final = s["rounds"][-1]
        tuned = load_model(final["cfg"], final["weights"])
        res[name] = {"flops": model_flops(tuned, hw) / full_flops,
                     "params": sum(q.numel() for q in tuned.parameters()),
                     # its last cut (to the target, from round 2's fine-tuned model)
                     "pruned": {"map50": round(s["rounds"][-1]["map50_pruned"], 4), "map": None},
                     "finetuned": metric(tuned), "ft_s": round(time.time() - t),
                     "rounds": [{k: r[k] for k in ("map50_pruned", "map50", "flops_fraction")}
                                for r in s["rounds"]]}
        save()
    if "latency" not in res:
        rep = unstructured(b_cfg, b_w, os.path.join(w, "unstructured"), 0.5, a.latency_size,
                           0.5, a.runs, 5, True, threads=1, log=print)
        res["latency"] = {"size_bytes": rep["size_bytes"], "latency": rep["latency"],
                          "sparsity": rep["sparsity"]["sparsity"]}
        save()
    if "dense" not in res:  # the control: the same fine-tuning budget without any pruning
        finish("dense", b_cfg, b_w, {})
    write_md(a, res, argv)
    return 0


def run_commands(a, which: str) -> str:
    """The command that made the --baseline / --sparse run, from its RUN/commands.txt."""
    d = a.baseline if which == "baseline" else a.sparse
    if not d:
        return (f"{a.base_epochs} epochs through the engine with the demo recipe into "
                f"`{a.work}/baseline`")
    path = os.path.join(os.path.dirname(d.rstrip("/")), "commands.txt")
    lines = open(path).read().splitlines() if os.path.isfile(path) else []
    mine = [x for x in lines if f"--output-dir {d.rstrip('/')}" in x]
    return f"`{mine[-1]}`" if mine else f"the run in `{d}`"


def write_md(a, res: dict, argv) -> None:
    b = res["baseline"]
    recipe_text = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in demo_recipe().items())
    cmd = "python bench/beyond_bench.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
    L = ["# Beyond one-shot slimming: importance criteria, sensitivity, iterative, unstructured", "",
         f"Date {time.strftime('%Y-%m-%d')}. Machine: {platform.machine()} {os.cpu_count()}-core "
         "CPU, no GPU (latency taken single-threaded, batch 1). "
         f"torch {torch.__version__}.", "", f"Command: `{cmd}`", "",
         "## Setting", "",
         f"- data: `{a.data or a.work + '/shapes/shapes.data'}`, the synthetic shapes set "
         "(`yolo_slim.data.synthetic`, seed 0, 5 classes), evaluated on its whole validation list at "
         f"{a.img_size} px (letterboxed, conf 0.001, NMS IoU 0.6);",
         f"- baseline: `{a.cfg}` trained from scratch: " + run_commands(a, "baseline") + ";",
         f"- every variant ends at <= {a.target_flops} x the baseline FLOPs (strategy slim) and gets "
         f"{a.ft_epochs} fine-tuning epochs in total with the demo recipe ({recipe_text}) and "
         f"`--kd {a.ft_kd}` from the baseline, batch 16, seed 0; `iter3` spends them as 3 rounds x "
         f"{max(1, a.ft_epochs // 3)} epochs, each round cutting to {a.target_flops}^(1/3) of the "
         "current FLOPs (`iter3-nowarmup`: the same with warmup_epochs=0, since the recipe's "
         "warm-up restarts in every round);",
         "- `dense` is the control: the baseline fine-tuned with the same budget and no pruning "
         "(what the extra epochs alone give);",
         "- `bn`, `l1`, `rank`, `sens` and `iter3` start from the baseline as it is (no sparsity "
         "training, so `bn` ranks by plain BN scale); "
         + ("`bn+sr` starts from the sparsity-trained model: " + run_commands(a, "sparse")
            + " (these epochs come on top of the fine-tuning budget)" if a.sparse else
            "no `bn+sr` row (no --sparse run given)") + ";",
         f"- `sens`: every unit cut alone at {a.sens_ratios}, mAP@0.5 on all validation images, "
         f"greedy ratios for the FLOPs target under a {a.sens_max_drop} drop per unit.", "",
         f"Baseline: mAP@0.5 {b['map50']:.4f}, mAP@0.5:0.95 {b['map']:.4f}, "
         f"{b['flops'] / 1e9:.3f} GFLOPs at {a.img_size} px."
         + (f" Sparse-trained model: mAP@0.5 {res['sparse_model']['map50']:.4f}."
            if "sparse_model" in res else ""), "",
         "## Same FLOPs target, same fine-tuning budget", "",
         "| variant | FLOPs kept | params | mAP@0.5 pruned | mAP@0.5 fine-tuned | mAP@0.5:0.95 fine-tuned | fine-tune wall s |",
         "|---|---|---|---|---|---|---|"]
    for k in ("dense", "bn", "l1", "rank", "sens", "iter3", "iter3-nowarmup") + \
            (("bn+sr",) if a.sparse else ()):
        if k not in res:
            L.append(f"| {k} | not measured | | | | | |")
            continue
        r = res[k]
        L.append(f"| {k} | {r['flops']:.3f} | {r['params']:,} | {r['pruned']['map50']:.4f} | "
                 f"{r['finetuned']['map50']:.4f} | {r['finetuned']['map']:.4f} | {r['ft_s']} |")
    for k in ("iter3", "iter3-nowarmup"):
        if k in res:
            L += ["", f"{k} per round (FLOPs of the original, mAP@0.5 after pruning -> after its "
                  "fine-tuning): " + "; ".join(f"{x['flops_fraction']:.3f}: {x['map50_pruned']:.4f}"
                                        f" -> {x['map50']:.4f}" for x in res[k]["rounds"])]
    if "sens" in res:
        L += ["", f"sens: analysis took {res['sens']['analysis_s']} s; chosen cut per unit "
              + ", ".join(f"{u}: {r:g}" for u, r in zip(res["sens"]["units"], res["sens"]["unit_ratios"]))]
    if "latency" in res:
        lat, z = res["latency"]["latency"], res["latency"]["size_bytes"]
        L += ["", f"## Latency: 50% unstructured vs 50%-FLOPs structured ({a.latency_size} px, "
              "batch 1, 1 thread, median of " f"{a.runs} runs)", "",
              "| model | GFLOPs | torch ms | onnxruntime ms | .weights bytes | gzip bytes |",
              "|---|---|---|---|---|---|"]
        sizes = {"dense": (z["dense"], z["dense_gzip"]),
                 "unstructured_0.5": (z["unstructured"], z["unstructured_gzip"]),
                 "structured_flops_0.5": (z.get("structured"), z.get("structured_gzip"))}
        for name, v in lat.items():
            s = sizes.get(name, (None, None))
            L.append(f"| {name} | {v['flops'] / 1e9:.3f} | {v['torch_ms']:.2f} | "
                     f"{v.get('onnxruntime_ms', float('nan')):.2f} | {s[0]:,} | {s[1]:,} |")
        L += ["", f"Unstructured sparsity measured: {res['latency']['sparsity']:.6f} of the conv "
              "weights are zero."]
    L += ["", "## What this says", "", "NOTES", ""]
    text = "\n".join(L) + "\n"
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    if os.path.isfile(a.out):  # keep hand-written notes of an earlier run
        old = open(a.out).read()
        if "## What this says" in old:
            text = text.replace("## What this says\n\nNOTES\n", "## What this says" +
                                old.split("## What this says", 1)[1])
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
