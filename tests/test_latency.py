"""Latency table (analysis/latency.py), latency-targeted widths (prune/latency_target.py) and the
onnxruntime timer (deploy/ort_latency.py). The table and the chooser are tested with an injected
fake timer (deterministic); only the smoke tests time anything for real."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from cfgs import max_abs, raw, tol  # noqa: E402
from netgen import random_model, standard_model, write_random_net  # noqa: E402

from yolo_slim.analysis.graph import build_graph, shortcut_groups  # noqa: E402
from yolo_slim.analysis.latency_weights import class_latency_saving  # noqa: E402
from yolo_slim.analysis.latency import (LatencyTable, measure_table,  # noqa: E402
                                        spec_key)
from yolo_slim.core.errors import TargetUnreachable  # noqa: E402
from yolo_slim.nn.model import conv_layers  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.prune.latency_target import table_target  # noqa: E402

HW = (64, 64)


def fake_timer(penalty: float = 1.0, calls: list | None = None, inputs: bool = False):
    """ms = 0.01 + 1e-6 · H·W·k²·cin·cout / stride², times `penalty` when cout is off 8 (and
    again when cin is, with `inputs`)."""
    def t(spec, cin, cout):
        if calls is not None:
            calls.append((spec_key(spec), cin, cout))
        h, w = spec["in_hw"]
        ms = 0.01 + 1e-6 * h * w * spec["size"] ** 2 * cin * cout / (spec["stride_y"] * spec["stride_x"])
        return ms * (penalty if cout % 8 else 1.0) * (penalty if inputs and cin % 8 else 1.0)
    return t


def counts(m) -> dict[int, int]:
    return {i: c.conv.out_channels for i, c in conv_layers(m)}


def test_table_is_deterministic_given_its_measurements(tmp_path, corpus_dir):
    defs = standard_model("yolov3", corpus_dir).module_defs
    c1, c2 = [], []
    t1 = measure_table(defs, HW, fake_timer(1.5, c1), overhead_ms=0.005, full_ms=40.0)
    t2 = measure_table(defs, HW, fake_timer(1.5, c2), overhead_ms=0.005, full_ms=40.0)
    assert c1 == c2 and t1.to_json() == t2.to_json()
    # convs of one residual stage share an entry: far fewer entries than convs
    assert len(t1.entries) < len(t1.layers) == len(counts(standard_model("yolov3", corpus_dir)))
    t1.save(str(tmp_path / "t.json"))
    back = LatencyTable.load(str(tmp_path / "t.json"))
    assert back.to_json() == json.loads((tmp_path / "t.json").read_text())
    assert back.to_json() == json.loads(json.dumps(t1.to_json()))
    # the whole model is calibrated to what was measured
    assert back.predict(defs)["total_ms"] == pytest.approx(40.0)
    g = build_graph(defs)
    for i in g.must_keep_convs():  # a head conv's outputs never change: timed at full only
        e = back.entries[back.layers[i]]
        assert e["cout"] == [e["spec"]["cout"]]
    # the penalty of an unaligned output count is what the timer shows (1.5 x one channel more),
    # inputs have none
    pens = {tuple(e["penalty"]) for e in back.entries.values() if e["vary"][1] and len(e["cout"]) > 2}
    assert pens and all(p[0] == 1.0 and 1.4 < p[1] <= 1.5 for p in pens)


def test_bilinear_prediction_is_exact_for_a_bilinear_cost():
    m = random_model(2)
    table = measure_table(m.module_defs, HW, fake_timer())
    for i, k in table.layers.items():
        e = table.entries[k]
        s = e["spec"]
        for cin in range(min(e["cin"]), max(e["cin"]) + 1, 3):
            for cout in range(min(e["cout"]), max(e["cout"]) + 1, 5):
                assert table.conv_ms(k, cin, cout) == pytest.approx(fake_timer()(s, cin, cout), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_latency_target_meets_prediction_and_every_graph_constraint(seed):
    m = random_model(seed)
    x = torch.rand(1, 3, *HW, generator=torch.Generator().manual_seed(seed))
    for penalty, (strategy, frac, keep) in zip((1.0, 2.0, 2.0), (("slim", 0.6, 0.0),
                                                                 ("shortcut", 0.7, 0.2), ("slim", 0.5, 0.1))):
        # unaligned counts cost more on both axes: then cutting off the block never pays
        table = measure_table(m.module_defs, HW, fake_timer(penalty, inputs=True))
        path = f"/tmp/yolo_slim_test_latency_{seed}_{penalty}_{strategy}.json"
        table.save(path)
        target = frac * table.predict(m.module_defs)["total_ms"]
        try:
            r = prune_model(m, PruneOptions(strategy=strategy, target_latency=target, layer_keep=keep,
                                            latency_table=path))
        except TargetUnreachable:
            continue
        lat = r.report["latency"]
        assert lat["predicted_ms"] <= target + 1e-12
        # the prediction is the table's for the compact cfg itself
        assert table.predict(r.compact.module_defs)["total_ms"] == pytest.approx(lat["predicted_ms"])
        before, after = counts(m), counts(r.compact)
        for grp in shortcut_groups(m.module_defs):
            assert len({after[i] for i in grp}) == 1
        for i in r.graph.must_keep_convs():
            assert after[i] == before[i]
        for i, c in after.items():
            assert c >= max(1, math.ceil(keep * before[i] - 1e-9))
            e = table.entries[table.layers[i]]
            if e["penalty"][1] > 1:  # alignment pays there: never an unaligned cut
                assert c == before[i] or c % 8 == 0, (seed, i, c, before[i])
        # verified exact like any other cut
        assert r.report["verification"]["rel_vs_folded"] <= 1e-5
        ref = raw(r.folded, x)
        assert max_abs(raw(r.compact, x), ref) <= tol(ref)


def test_latency_target_keeps_more_importance_than_the_flops_cut_at_equal_prediction():
    """With latency per FLOP differing by layer, the chooser spends cuts where they save time."""
    m = random_model(4)
    h = {}

    def timer(spec, cin, cout):  # small maps cost 4x per FLOP: cutting them saves more time
        per = 4e-6 if spec["in_hw"][0] <= 16 else 1e-6
        return 0.001 + per * spec["in_hw"][0] * spec["in_hw"][1] * spec["size"] ** 2 * cin * cout
    table = measure_table(m.module_defs, HW, timer)
    table.save("/tmp/yolo_slim_test_latency_kept.json")
    flops_cut = prune_model(m, PruneOptions(target_flops=0.6), check=False)
    target = table.predict(flops_cut.compact.module_defs)["total_ms"]
    lat_cut = prune_model(m, PruneOptions(target_latency=target,
                                          latency_table="/tmp/yolo_slim_test_latency_kept.json"), check=False)
    for name, r in (("flops", flops_cut), ("latency", lat_cut)):
        from yolo_slim.prune.masks import MaskSolver
        s = MaskSolver(r.graph, r.scores, "slim")
        roots = np.flatnonzero(s.cuttable_roots() & r.keep_node)
        h[name] = float(s.class_scores()[roots].sum())
    assert lat_cut.report["latency"]["predicted_ms"] <= target
    assert h["latency"] >= h["flops"]


def test_unreachable_target_and_speedup():
    m = random_model(1)
    table = measure_table(m.module_defs, HW, fake_timer())
    table.save("/tmp/yolo_slim_test_latency_u.json")
    with pytest.raises(TargetUnreachable):
        prune_model(m, PruneOptions(target_latency=1e-9, latency_table="/tmp/yolo_slim_test_latency_u.json"),
                    check=False)
    full = table.predict(m.module_defs)["total_ms"]
    assert table_target(table, None, 2.0) == pytest.approx(full / 2)
    r = prune_model(m, PruneOptions(target_speedup=1.5, latency_table="/tmp/yolo_slim_test_latency_u.json"),
                    check=False)
    assert r.report["latency"]["predicted_ms"] <= full / 1.5


def test_sparsity_weights_from_the_table():
    m = random_model(0)
    g = build_graph(m.module_defs)
    table = measure_table(m.module_defs, HW, fake_timer())
    roots = np.unique(g.root[np.concatenate([g.conv_nodes[i] for i in g.conv_nodes])])
    cls = np.full(len(g.root), -1)
    cls[roots] = np.arange(len(roots))
    w = class_latency_saving(table, g, cls, len(roots))
    assert w.shape == (len(roots),) and (w >= 0).all() and w.sum() > 0


def test_cli_target_latency_writes_predicted_and_measured(tmp_path):
    import prune_channels
    cfg, wts, m = write_random_net(tmp_path, 3, stem="net")
    table = measure_table(m.module_defs, HW, fake_timer(), full_ms=5.0)
    table.save(str(tmp_path / "table.json"))
    out = tmp_path / "out"
    assert prune_channels.main(["--cfg", str(cfg), "--weights", str(wts), "--output-dir", str(out),
                                "--target-speedup", "1.4", "--latency-table", str(tmp_path / "table.json"),
                                "--latency-threads", "1"]) == 0
    rep = json.loads((out / "prune_report.json").read_text())
    lat = rep["latency"]
    # the first solve takes the table's target; the closed loop then rescales it from the
    # measurements (this fake table is not the runtime), each round in the report
    assert lat["predicted_ms"] <= lat["target_ms"]
    rounds = lat["closed_loop"]["rounds"]
    assert rounds[0]["table_target_ms"] == pytest.approx(5.0 / 1.4) and 1 <= len(rounds) <= 4
    assert lat["closed_loop"]["goal_ms"] == pytest.approx(rounds[-1]["measured_before_ms"] / 1.4)
    assert lat["measured_ms"] > 0 and lat["speedup"] > 0 and lat["flops_reduction"] > 1
    assert set(lat["measured"]["models"]) == {"before", "after"}
    assert (out / "latency.png").is_file()
    # a table is an input: the run refuses to write over it
    assert prune_channels.main(["--cfg", str(cfg), "--weights", str(wts), "--output-dir", str(tmp_path),
                                "--target-latency", "1", "--latency-table", str(tmp_path / "args.json")]) == 2


def test_ort_timer_smoke():
    from yolo_slim.deploy.ort_latency import OrtConvTimer, conv_graph
    import onnx
    spec = {"size": 3, "stride_y": 1, "stride_x": 1, "padding": 1, "groups": 1, "dilation": 1,
            "in_hw": [16, 16], "cin": 8, "cout": 8, "act": "leaky", "batch": 1}
    for act in ("leaky", "linear", "mish", "swish", "relu", "logistic", "tanh"):
        onnx.checker.check_model(onnx.load_from_string(conv_graph({**spec, "act": act}, 8, 16)))
    t = OrtConvTimer(threads=1, runs=3, warmup=1)
    ms = t(spec, 8, 16)
    assert 0 < ms < 1000 and math.isfinite(t.empty_ms())


def test_report_stage_latency_row_shows_median_spread_and_ratio():
    from yolo_slim.report.pipeline_report import format_table
    base = {"map50": 0.5, "map": 0.3, "params": 2e6, "flops": 1e9, "size_mb": 8.0}
    lat = {"median_ms": 4.0, "p25_ms": 3.8, "p75_ms": 4.4, "min_ms": 3.5, "ratio_median": 1.0}
    rows = [("baseline", {**base, "latency": lat}),
            ("pruned", {**base, "flops": 2e8, "latency": {**lat, "median_ms": 2.0, "ratio_median": 0.52}})]
    text = format_table(rows)
    assert "4.0 ms (3.8-4.4) |" in text and "2.0 ms (3.8-4.4) (52%) |" in text


def test_closed_loop_meets_the_measured_target(tmp_path):
    """The runtime is not the table: here it runs every model at 1.6x the table's prediction
    + 0.3 ms. One solve from the table alone misses a measured target by far; the closed loop
    rescales the table's target from the measurements until the measured latency is within 5%,
    and the report keeps every round."""
    from yolo_slim.prune.pipeline import run_channels
    cfg, wts, m = write_random_net(tmp_path, 3, stem="net")
    table = measure_table(m.module_defs, HW, fake_timer(), full_ms=5.0)
    path = str(tmp_path / "table.json")
    table.save(path)

    def runtime(defs) -> float:
        return 1.6 * table.predict(defs)["total_ms"] + 0.3

    def measure(models, hw):
        t = {k: runtime(v.module_defs) for k, v in models.items()}
        return {"models": {k: {"median_ms": v, "ratio_median": v / t["before"]} for k, v in t.items()}}
    full = runtime(m.module_defs)
    goal = full / 1.5  # a measured target the table alone would miss: it predicts 1.6x too low
    reps = {}
    for rounds in (0, 3):
        reps[rounds] = run_channels(str(cfg), str(wts), str(tmp_path / f"r{rounds}"),
                                    PruneOptions(target_latency=goal, latency_table=path, latency_rounds=rounds),
                                    measure=measure, log=lambda s: None)["latency"]
    assert abs(reps[0]["closed_loop"]["measured_error"]) > 0.3  # the table's ms are not the runtime's
    loop = reps[3]["closed_loop"]
    assert abs(loop["measured_error"]) <= 0.05 and len(loop["rounds"]) >= 2
    assert reps[3]["measured_ms"] == pytest.approx(goal, rel=0.05)
    assert loop["rounds"][0]["table_target_ms"] == pytest.approx(goal)
    # each re-solve scaled the table target by goal / measured
    for a, b in zip(loop["rounds"], loop["rounds"][1:]):
        assert b["table_target_ms"] == pytest.approx(a["table_target_ms"] * goal / a["measured_ms"])


def test_table_cache_is_found_by_key_not_by_file_name(tmp_path, monkeypatch):
    """~/.cache/yolo-slim/latency ($YOLO_SLIM_CACHE): a table is keyed by the architecture,
    size, batch, runtime, threads, machine and table version; the same cfg under another file
    name (a run's best.pt for cfg/demo.cfg) reuses it instead of measuring again."""
    import shutil
    from yolo_slim.tools import latency as tl
    monkeypatch.setenv("YOLO_SLIM_CACHE", str(tmp_path / "cache"))
    cfg, _, m = write_random_net(tmp_path, 3, stem="net")
    other = tmp_path / "renamed.cfg"
    shutil.copy(cfg, other)
    path = tl.table_path(str(cfg), HW, 1, "onnxruntime-cpu", 2, 4, 8, "min")
    (tmp_path / "cache").mkdir()
    measure_table(m.module_defs, HW, fake_timer()).save(path)

    def no_timing(*a, **k):
        raise AssertionError("measured again")
    monkeypatch.setattr(tl, "ConvTimer", no_timing)
    assert tl.ensure_table(str(other), HW, align=8, log=lambda s: None) == path
    # another size is another key (and would be measured)
    assert tl.table_path(str(other), (32, 32), 1, "onnxruntime-cpu", 2, 4, 8, "min") != path
    with pytest.raises(AssertionError, match="measured again"):
        tl.ensure_table(str(other), (32, 32), align=8, log=lambda s: None)


def test_closed_loop_keeps_the_closest_cut_when_the_goal_is_out_of_reach(tmp_path):
    """A runtime whose fixed cost alone exceeds the goal: the re-solves push the table's target
    down until the table cannot go lower; the run still writes the closest measured cut and
    says by how much it missed."""
    from yolo_slim.prune.pipeline import run_channels
    cfg, wts, m = write_random_net(tmp_path, 3, stem="net")
    table = measure_table(m.module_defs, HW, fake_timer(), full_ms=5.0)
    path = str(tmp_path / "table.json")
    table.save(path)
    fixed = 4.0 * table.predict(m.module_defs)["total_ms"]

    def measure(models, hw):
        t = {k: table.predict(v.module_defs)["total_ms"] + fixed for k, v in models.items()}
        return {"models": {k: {"median_ms": v, "ratio_median": v / t["before"]} for k, v in t.items()}}
    rep = run_channels(str(cfg), str(wts), str(tmp_path / "out"),
                       PruneOptions(target_speedup=2.0, latency_table=path, latency_rounds=3),
                       measure=measure, log=lambda s: None)
    loop = rep["latency"]["closed_loop"]
    assert loop["measured_error"] > 0.05 and 1 <= len(loop["rounds"]) <= 4
    assert loop["measured_error"] == pytest.approx(min(r["error"] for r in loop["rounds"]))
    assert (tmp_path / "out" / "net.cfg").is_file()


def test_two_point_calibration_goes_through_the_full_and_the_floor_model():
    from yolo_slim.analysis.graph import prunable_of
    from yolo_slim.darknet.cfg import parse_cfg
    REPO = Path(__file__).resolve().parents[1]
    """With a floor model timed beside the full one, predictions are the line through both
    (hand-computed here), and go linearly to 0 below the floor: a one-conv model's fixed costs
    (reorders, map copies) no longer make narrow cuts look slow."""
    from yolo_slim.tools.latency import floor_defs
    defs = parse_cfg(str(REPO / "cfg" / "yolov3-tiny.cfg"))
    narrow = floor_defs(defs, HW)
    g = build_graph(defs)
    full_w = {i: len(n) for i, n in g.conv_nodes.items()}
    small_w = {i: int(d["filters"]) for i, d in enumerate(narrow[1:]) if d["type"] == "convolutional"}
    heads = set(g.must_keep_convs())
    assert all(small_w[i] < full_w[i] for i in prunable_of(g, "slim"))
    cut = [i for i in full_w if i not in heads]
    kept = sum(small_w[i] for i in cut) / sum(full_w[i] for i in cut)
    assert 0.45 <= kept <= 0.55 and all(small_w[i] == full_w[i] for i in heads)
    t = measure_table(defs, HW, fake_timer(), full_ms=10.0, floor=(narrow, 4.0))
    s_full = sum(t.predict(defs)["layers"].values())
    s_floor = sum(t.predict(narrow)["layers"].values())
    scale = (10.0 - 4.0) / (s_full - s_floor)
    assert t.calib["scale"] == pytest.approx(scale) and t.calib["rest_ms"] == pytest.approx(10.0 - scale * s_full)
    assert t.predict(defs)["total_ms"] == pytest.approx(10.0)
    assert t.predict(narrow)["total_ms"] == pytest.approx(4.0)
    assert t.total(s_floor / 2) == pytest.approx(2.0) and t.total(0.0) == 0.0
    # a floor that is not faster cannot define the line: the factor through the origin stays
    t2 = measure_table(defs, HW, fake_timer(), full_ms=10.0, floor=(narrow, 12.0))
    assert t2.calib["rest_ms"] == 0.0 and t2.calib["scale"] == pytest.approx(10.0 / s_full)
    assert "floor_sum_ms" not in t2.calib


def test_a_narrow_runtime_gets_a_grid_point_under_its_block(write_cfg_file):
    """ncnn packs 4 channels; blocked layouts (NCHWc) pad them: only a narrow runtime's table can
    predict a conv under the block cheaper (hand-computed grids)."""
    from yolo_slim.analysis.latency import grid_points
    from yolo_slim.tools.latency import narrow_pays
    assert grid_points(16, 4, 16, True) == [16] and grid_points(16, 4, 16, True, narrow=True) == [4, 16]
    assert grid_points(64, 4, 16, True) == [16, 32, 48, 64]
    assert grid_points(64, 4, 16, True, narrow=True) == [4, 16, 32, 48, 64]
    assert grid_points(3, 4, 16, True, narrow=True) == [3]
    assert (narrow_pays("onnxruntime"), narrow_pays("onnxruntime-cpu"), narrow_pays("openvino"),
            narrow_pays("ncnn")) == (False, False, False, True)
    from yolo_slim.darknet.cfg import parse_cfg
    defs = parse_cfg(write_cfg_file(TINY_NARROW))
    wide = measure_table(defs, HW, fake_timer(), align=16)
    thin = measure_table(defs, HW, fake_timer(), align=16, narrow=True)
    assert (wide.meta["narrow"], thin.meta["narrow"]) == (False, True)
    k = wide.layers[0]
    assert wide.entries[k]["cout"] == [16] and thin.entries[k]["cout"] == [4, 16]
    # the fake timer's cost is bilinear in the counts: at 4 outputs the narrow table predicts it
    spec = thin.entries[k]["spec"]
    assert thin.conv_ms(k, 3, 4) == pytest.approx(fake_timer()(spec, 3, 4))
    assert wide.conv_ms(k, 3, 4) == pytest.approx(fake_timer()(spec, 3, 16))  # no cheaper under 16


TINY_NARROW = """[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky
[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""

