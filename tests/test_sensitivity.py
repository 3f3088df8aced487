"""Sensitivity analysis: the per-unit table, the greedy choice meets the FLOPs target under the
drop limit, and prune_channels.py --layer-ratios reproduces exactly the predicted FLOPs."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import cv2
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import random_model, randomize_bn  # noqa: E402

from yolo_slim.darknet.cfg import parse_cfg_text  # noqa: E402
from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.analysis.graph import build_graph  # noqa: E402
from yolo_slim.analysis.importance import node_scores  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.prune.masks import MaskSolver  # noqa: E402
from yolo_slim.analysis.cost import model_flops  # noqa: E402
from yolo_slim.tools.sensitivity import (SensitivityOptions, choose_ratios, layer_ratio_map,  # noqa: E402
                                   measure, run)
from yolo_slim.nn.weights import save_darknet_weights  # noqa: E402
from cfgs import TINY_RESIDUAL as TINY  # noqa: E402

RATIOS = [0.25, 0.5, 0.75]


def solver_of(m: Darknet, **kw) -> MaskSolver:
    g = build_graph(m.module_defs)
    return MaskSolver(g, node_scores(m, g, "bn"), "slim", img_hw=(64, 64), **kw)


def fake_table(solver: MaskSolver, base: float = 0.5) -> dict:
    """A table without evaluation: unit k at ratio r drops r * (k % 3 + 1) / 10."""
    units = solver.units()
    rows = [{"unit": k, "layers": u, "ratio": r, "drop": r * (k % 3 + 1) / 10}
            for k, u in enumerate(units) for r in RATIOS]
    return {"base": base, "units": units, "ratios": RATIOS, "rows": rows}


@pytest.mark.parametrize("seed", range(8))
def test_chosen_ratios_meet_target(seed):
    m = random_model(seed)
    solver = solver_of(m, round_to=[1, 2][seed % 2])
    table = fake_table(solver)
    max_drop = 0.16
    for target in (0.8, 0.6):
        try:
            chosen, frac = choose_ratios(solver, table, target, max_drop)
        except YoloSlimError as e:
            assert "out of reach" in str(e)
            continue
        assert frac <= target
        for k, r in enumerate(chosen):  # never beyond the largest cut the unit tolerates
            assert r == 0 or r * (k % 3 + 1) / 10 <= max_drop
        ratios = {int(i): r for i, r in layer_ratio_map(table["units"], chosen).items()}
        res = prune_model(m, PruneOptions(layer_ratios=ratios, round_to=[1, 2][seed % 2],
                                          img_size=(64, 64)), check=False)
        got = model_flops(res.compact, (64, 64))
        assert got == round(frac * solver.flops_full)
        assert got <= target * model_flops(m, (64, 64))


def test_unreachable_target_raises():
    solver = solver_of(random_model(1))
    with pytest.raises(YoloSlimError, match="out of reach"):
        choose_ratios(solver, fake_table(solver), 0.05, 0.0001)


def test_measure_counts_and_drops():
    m = random_model(0)
    solver = solver_of(m)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m.forward_raw(x)

    def metric(model):  # a deterministic stand-in: closeness of the raw heads to the original
        with torch.no_grad():
            out = model.eval().forward_raw(x)
        return -max(float((a - b).abs().max()) for a, b in zip(out, ref))
    t = measure(m, solver, RATIOS, metric, log=lambda *a: None)
    assert t["base"] == 0.0 and len(t["rows"]) == len(solver.units()) * len(RATIOS)
    for row in t["rows"]:
        assert row["drop"] >= 0 and 0 < row["flops"] <= 1
        assert row["kept"] <= row["channels"]
    for k in range(len(t["units"])):  # more cut -> fewer channels and FLOPs
        rs = [r for r in t["rows"] if r["unit"] == k]
        assert [r["kept"] for r in rs] == sorted([r["kept"] for r in rs], reverse=True)
        assert [r["flops"] for r in rs] == sorted([r["flops"] for r in rs], reverse=True)


def test_end_to_end_files_and_prune_channels(tmp_path, capsys):
    from yolo_slim.data.synthetic import make_shapes_dataset
    import prune_channels
    data = make_shapes_dataset(str(tmp_path / "s"), 4, 4, 64, 0)
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY)
    m = Darknet(parse_cfg_text(TINY)).eval()
    randomize_bn(m, 3)
    save_darknet_weights(m, str(tmp_path / "tiny.weights"))
    out = tmp_path / "sens"
    opts = SensitivityOptions(ratios=[0.25, 0.75], target_flops=0.7, max_drop=1.0,
                              eval_images=4, batch_size=4)
    res = run(str(cfg), str(tmp_path / "tiny.weights"), data, str(out), opts, log=lambda *a: None)
    units = res["units"]
    assert units == [[0], [1, 3], [2], [5]]  # the shortcut group 1+3 is one unit
    with open(out / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(units) * 2
    assert all(math.isclose(float(r["drop"]), res["base"] - float(r["map50"]), abs_tol=2e-4)
               for r in rows)
    png = cv2.imread(str(out / "sensitivity.png"))
    assert png is not None and png.shape[0] > 20 * len(units)
    assert "| unit |" in (out / "sensitivity.md").read_text()
    ratios = json.loads((out / "ratios.json").read_text())
    assert ratios["flops_fraction"] <= 0.7
    rc = prune_channels.main(["--cfg", str(cfg), "--weights", str(tmp_path / "tiny.weights"),
                              "--output-dir", str(tmp_path / "p"),
                              "--layer-ratios", str(out / "ratios.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "p" / "prune_report.json").read_text())
    assert rep["flops"]["after"] == round(ratios["flops_fraction"] * rep["flops"]["before"])
    assert "warning" not in capsys.readouterr().err
    # other mask flags than the analysis used: the masks differ from what was measured -> warned
    rc = prune_channels.main(["--cfg", str(cfg), "--weights", str(tmp_path / "tiny.weights"),
                              "--output-dir", str(tmp_path / "p2"), "--layer-keep", "0.5",
                              "--layer-ratios", str(out / "ratios.json")])
    err = capsys.readouterr().err
    assert rc == 0 and "--layer-keep 0.5 (file: 0.0)" in err
    # out of reach under the drop: the table is still written, the error says why
    with pytest.raises(YoloSlimError, match="out of reach"):
        run(str(cfg), str(tmp_path / "tiny.weights"), data, str(tmp_path / "s2"),
            SensitivityOptions(ratios=[0.25], target_flops=0.1, max_drop=1.0, eval_images=4,
                               batch_size=4), log=lambda *a: None)
    assert (tmp_path / "s2" / "sensitivity.csv").is_file()
