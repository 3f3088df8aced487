"""Sensitivity analysis: the per-unit table, the greedy choice meets the FLOPs or the predicted
latency target under the drop limit, and prune_channels.py --layer-ratios reproduces exactly the
predicted FLOPs (and the table's predicted latency)."""
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
from yolo_slim.analysis.latency import measure_table  # noqa: E402
from yolo_slim.prune.latency_target import table_target  # noqa: E402
from yolo_slim.tools.ratio_choice import flops_cost, latency_cost, unit_keep  # noqa: E402
from yolo_slim.tools.sensitivity import (SensitivityOptions, choose_ratios, layer_ratio_map,  # noqa: E402
                                         main, measure, run)
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
            chosen, frac = choose_ratios(solver, table, flops_cost(solver, target), max_drop)
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
        choose_ratios(solver, fake_table(solver), flops_cost(solver, 0.05), 0.0001)


def closeness(m: Darknet):
    """A deterministic stand-in for mAP: minus the largest raw-head change from `m`'s."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m.eval().forward_raw(x)

    def metric(model):
        with torch.no_grad():
            out = model.eval().forward_raw(x)
        return -max(float((a - b).abs().max()) for a, b in zip(out, ref))
    return metric


def timer(spec, cin, cout):
    """A fake onnxruntime: ms = 0.01 + 1e-6 · H·W·k²·cin·cout / stride²."""
    h, w = spec["in_hw"]
    return 0.01 + 1e-6 * h * w * spec["size"] ** 2 * cin * cout / (spec["stride_y"] * spec["stride_x"])


def test_measure_counts_and_drops():
    m = random_model(0)
    solver = solver_of(m)
    t = measure(m, solver, RATIOS, closeness(m), log=lambda *a: None)
    assert t["base"] == 0.0 and len(t["rows"]) == len(solver.units()) * len(RATIOS)
    for row in t["rows"]:
        assert row["drop"] >= 0 and 0 < row["flops"] <= 1
        assert row["kept"] <= row["channels"]
    for k in range(len(t["units"])):  # more cut -> fewer channels and FLOPs
        rs = [r for r in t["rows"] if r["unit"] == k]
        assert [r["kept"] for r in rs] == sorted([r["kept"] for r in rs], reverse=True)
        assert [r["flops"] for r in rs] == sorted([r["flops"] for r in rs], reverse=True)


@pytest.mark.parametrize("seed", range(4))
def test_latency_target_choice(seed):
    """The cost is the table's prediction for the pruned widths: the chosen ratios are predicted
    at or under the target, the pruned model's own prediction is the same number, and a looser
    target stops earlier on the same greedy path (never a larger cut in any unit)."""
    m = random_model(seed)
    solver, hw = solver_of(m), (64, 64)
    lat = measure_table(m.module_defs, hw, timer, full_ms=3.0)
    assert lat.predict(m.module_defs)["total_ms"] == pytest.approx(3.0)
    table, got = fake_table(solver), {}
    for x in (1.1, 1.3):
        goal = table_target(lat, None, x, m.module_defs)
        assert goal == pytest.approx(3.0 / x)
        chosen, ms = choose_ratios(solver, table, latency_cost(solver, lat, goal, f"x{x}"), 0.16)
        assert ms <= goal and any(chosen)
        keep, g = unit_keep(solver, table["units"], chosen), solver.g
        over = lat.predict(m.module_defs, {i: int(keep[g.in_nodes(i)].sum()) for i in g.conv_nodes},
                           {i: int(keep[n].sum()) for i, n in g.conv_nodes.items()})
        assert over["total_ms"] == pytest.approx(ms, rel=1e-12)
        ratios = {int(i): r for i, r in layer_ratio_map(table["units"], chosen).items()}
        res = prune_model(m, PruneOptions(layer_ratios=ratios, img_size=hw), check=False)
        # the compact cfg alone: a conv may bind another conv's entry of its geometry (the smallest
        # that holds its new counts, LatencyTable.bind), whose grid interpolates a little apart
        assert lat.predict(res.compact.module_defs)["total_ms"] == pytest.approx(ms, rel=0.01)
        got[x] = chosen, ms
    (loose, ms_loose), (tight, ms_tight) = got[1.1], got[1.3]
    assert ms_tight < 3.0 / 1.3 < 3.0 / 1.1 < ms_loose / 0.95 and ms_loose > ms_tight
    assert all(a <= b for a, b in zip(loose, tight)) and sum(loose) < sum(tight)


def tiny_files(tmp_path: Path) -> tuple[str, str, Darknet]:
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY)
    m = Darknet(parse_cfg_text(TINY)).eval()
    randomize_bn(m, 3)
    save_darknet_weights(m, str(tmp_path / "tiny.weights"))
    return str(cfg), str(tmp_path / "tiny.weights"), m


def test_run_with_target_speedup(tmp_path, capsys):
    """--target-speedup through run(): ratios.json and sensitivity.json/.md record the target and
    the predicted ms, and prune_channels.py --layer-ratios makes a model the table predicts at that."""
    import prune_channels
    cfg, wts, m = tiny_files(tmp_path)
    lat = measure_table(m.module_defs, (64, 64), timer, full_ms=2.0)
    path = str(tmp_path / "table.json")
    lat.save(path)
    opts = SensitivityOptions(ratios=[0.25, 0.5, 0.75], target_speedup=1.25, latency_table=path,
                              max_drop=1e9, img_size=64)
    res = run(cfg, wts, "unused.data", str(tmp_path / "s"), opts, log=lambda *a: None,
              metric=closeness(m))
    c = json.loads((tmp_path / "s" / "ratios.json").read_text())
    assert c == res["chosen"] and c["target_speedup"] == 1.25 and c["latency_table"] == path
    assert c["predicted_before_ms"] == pytest.approx(2.0)
    assert c["target_latency_ms"] == pytest.approx(2.0 / 1.25)
    assert 0 < c["predicted_ms"] <= c["target_latency_ms"] and c["flops_fraction"] < 1
    saved = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert saved["target"]["target_latency_ms"] == c["target_latency_ms"]
    assert f"{c['predicted_ms']:.4g} ms predicted" in (tmp_path / "s" / "sensitivity.md").read_text()
    assert prune_channels.main(["--cfg", cfg, "--weights", wts, "--output-dir", str(tmp_path / "p"),
                                "--layer-ratios", str(tmp_path / "s" / "ratios.json")]) == 0
    pruned = parse_cfg_text((tmp_path / "p" / "tiny.cfg").read_text())
    assert lat.predict(pruned)["total_ms"] == pytest.approx(c["predicted_ms"], rel=1e-9)
    # a target the tolerated cuts cannot reach names the flag and the ms it got to
    with pytest.raises(YoloSlimError, match=r"--target-speedup 50.0 is out of reach .* ms \(predicted\)"):
        run(cfg, wts, "unused.data", str(tmp_path / "s2"),
            SensitivityOptions(ratios=[0.25], target_speedup=50.0, latency_table=path, max_drop=1e9,
                               img_size=64), log=lambda *a: None, metric=closeness(m))
    # two targets: refused, on the command line with argparse's one line, through run() with ours
    capsys.readouterr()
    assert main(["--cfg", cfg, "--weights", wts, "--data", "d.data", "--output-dir", str(tmp_path / "c"),
                 "--target-flops", "0.5", "--target-speedup", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--target-speedup: not allowed with argument --target-flops" in err
    with pytest.raises(YoloSlimError, match="give one of .*, not --target-flops and --target-latency"):
        run(cfg, wts, "unused.data", str(tmp_path / "c"),
            SensitivityOptions(target_flops=0.5, target_latency=1.0), log=lambda *a: None)
    assert not (tmp_path / "c").exists()


def test_end_to_end_files_and_prune_channels(tmp_path, capsys):
    from yolo_slim.data.synthetic import make_shapes_dataset
    import prune_channels
    data = make_shapes_dataset(str(tmp_path / "s"), 4, 4, 64, 0)
    cfg, wts, _ = tiny_files(tmp_path)
    out = tmp_path / "sens"
    opts = SensitivityOptions(ratios=[0.25, 0.75], target_flops=0.7, max_drop=1.0,
                              eval_images=4, batch_size=4)
    res = run(cfg, wts, data, str(out), opts, log=lambda *a: None)
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
    rc = prune_channels.main(["--cfg", cfg, "--weights", wts,
                              "--output-dir", str(tmp_path / "p"),
                              "--layer-ratios", str(out / "ratios.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "p" / "prune_report.json").read_text())
    assert rep["flops"]["after"] == round(ratios["flops_fraction"] * rep["flops"]["before"])
    assert "warning" not in capsys.readouterr().err
    # other mask flags than the analysis used: the masks differ from what was measured -> warned
    rc = prune_channels.main(["--cfg", cfg, "--weights", wts,
                              "--output-dir", str(tmp_path / "p2"), "--layer-keep", "0.5",
                              "--layer-ratios", str(out / "ratios.json")])
    err = capsys.readouterr().err
    assert rc == 0 and "--layer-keep 0.5 (file: 0.0)" in err
    # out of reach under the drop: the table is still written, the error says why
    with pytest.raises(YoloSlimError, match="out of reach"):
        run(cfg, wts, data, str(tmp_path / "s2"),
            SensitivityOptions(ratios=[0.25], target_flops=0.1, max_drop=1.0, eval_images=4,
                               batch_size=4), log=lambda *a: None)
    assert (tmp_path / "s2" / "sensitivity.csv").is_file()


def test_script_passes_target_speedup(tmp_path, repo_root, monkeypatch):
    """scripts/sensitivity.sh: the recipe's TARGET_FLOPS (recipes/demo.json: 0.5) by default,
    TARGET_SPEEDUP instead when set (PY=echo prints the commands it would run)."""
    import os
    import subprocess
    from yolo_slim.tools.sensitivity import parser
    for extra, flops, speedup in (({}, 0.5, None), ({"TARGET_SPEEDUP": "1.8"}, None, 1.8)):
        run_dir = tmp_path / str(speedup)
        (run_dir / "sensitivity").mkdir(parents=True)  # echo does not make it; .done goes there
        env = {**{k: v for k, v in os.environ.items() if k not in ("TARGET_FLOPS", "TARGET_SPEEDUP")},
               "PY": "echo", "RUN": str(run_dir), **extra}
        p = subprocess.run(["bash", str(repo_root / "scripts" / "sensitivity.sh")], capture_output=True,
                           text=True, env=env, timeout=60)
        args = p.stdout.split("\n")[0].split()
        assert p.returncode == 0 and args[:2] == ["-m", "yolo_slim.tools.sensitivity"]
        assert sum(a.startswith("--target-") for a in args) == len(extra)
        monkeypatch.chdir(repo_root)  # the recipe's path is the repo's
        ns = parser().parse_args(args[2:])
        assert (ns.target_flops, ns.target_speedup) == (flops, speedup)
