"""Cut exactly the dead channels (γ = β = 0) of a sparse model and measure what it costs:
max |Δ| of the compact model vs the unmasked sparse model over whole maps (borders included),
FLOPs/params, mAP@0.5 of sparse vs pruned before any fine-tuning. Writes <out>/pruned.pt (a
self-describing checkpoint distill.py can fine-tune) and <out>/dead_cut.json.

  python bench/dead_cut.py --weights runs/prox/sparse/best.pt --data data/shapes/shapes.data \
      --img-size 256 --out runs/prox/pruned [--percent 0.6]

(Until prune_channels.py has --dead, this is the --dead cut; same masks: MaskSolver.dead_keep.)
"""
from __future__ import annotations

import argparse
import copy
import json
import os

import numpy as np
import torch

from yolo_slim.analysis.cost import count_params, model_flops
from yolo_slim.analysis.graph import build_graph
from yolo_slim.nn.weights import load_model, save_checkpoint
from yolo_slim.eval.evaluate import evaluate_on_data
from yolo_slim.prune.compact import compact_model
from yolo_slim.prune.fold import apply_masks
from yolo_slim.prune.masks import MaskSolver, dead_nodes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", default="")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--strategy", default="slim")
    p.add_argument("--percent", type=float, default=None, help="report live channels this would add")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    model = load_model(None, a.weights).eval()
    g = build_graph(model.module_defs)
    hw = (a.img_size, a.img_size)
    gam = np.full(len(g.root), np.nan)
    for i, nodes in g.conv_nodes.items():
        bn = getattr(model.module_list[i], "bn", None)
        if bn is not None:
            gam[nodes] = bn.weight.detach().abs().numpy()
    solver = MaskSolver(g, gam, a.strategy, img_hw=hw)
    dead = dead_nodes(model, g)
    keep = solver.dead_keep(dead)
    folded = copy.deepcopy(model)
    apply_masks(folded, g, keep, fold=True)
    compact = compact_model(folded, g, keep).eval()
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = model.forward_raw(x), compact.forward_raw(x)
    rep = {"weights": a.weights, "dead_channels": int(dead.sum()),
           **solver.dead_report(dead, percent=a.percent),
           "max_abs_vs_unmasked": max(float((r - o).abs().max()) for r, o in zip(ref, out)),
           "max_abs_output": max(float(r.abs().max()) for r in ref),
           "flops": [model_flops(model, hw), model_flops(compact, hw)],
           "params": [count_params(model), count_params(compact)]}
    rep["flops_share"] = rep["flops"][1] / rep["flops"][0]
    if a.data:
        before, after = evaluate_on_data([model, compact], a.data, a.img_size, 16)
        rep["map_sparse"], rep["map_pruned"] = before, after
    os.makedirs(a.out, exist_ok=True)
    save_checkpoint(compact, os.path.join(a.out, "pruned.pt"))
    with open(os.path.join(a.out, "dead_cut.json"), "w") as f:
        json.dump(rep, f, indent=2)
    print(json.dumps(rep, indent=2))


if __name__ == "__main__":
    main()
