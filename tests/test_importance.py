"""Importance criteria (bn / l1 / rank) and --layer-ratios on the existing mask machinery.

Every criterion must give masks that pass the same exactness check as `bn` (compact vs folded
full-size model: max |Δ| <= 1e-5 x max |output| + 1e-6, float32 rounding), share one mask per
shortcut group, leave must-keep convs whole; `rank` must be deterministic for a fixed batch.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import random_model, write_random_net  # noqa: E402

from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.analysis.graph import build_graph, shortcut_groups  # noqa: E402
from yolo_slim.analysis.importance import l1_scores, node_scores, rank_images, rank_scores  # noqa: E402
from yolo_slim.nn.model import conv_layers  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.prune.masks import MaskSolver  # noqa: E402
from yolo_slim.analysis.cost import layer_shapes  # noqa: E402


def raw(m, x):
    with torch.no_grad():
        return m.eval().forward_raw(x)


def max_abs(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def counts(m) -> dict[int, int]:
    return {i: c.conv.out_channels for i, c in conv_layers(m)}


def images(seed: int, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(100 + seed))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("importance", ["l1", "rank"])
def test_criteria_masks_are_exact(seed, importance):
    m = random_model(seed)
    g = build_graph(m.module_defs)
    scores = rank_scores(m, g, images(seed)) if importance == "rank" else None
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    for s in ("normal", "shortcut", "slim"):
        opts = PruneOptions(strategy=s, importance=importance, round_to=[1, 2][seed % 2],
                            global_percent=0.3 + 0.1 * (seed % 4))
        r = prune_model(m, opts, scores=scores)
        ref = raw(r.folded, x)
        assert max_abs(raw(r.compact, x), ref) <= 1e-5 * max(float(t.abs().max()) for t in ref) + 1e-6
        before, after = counts(m), counts(r.compact)
        assert sum(after.values()) < sum(before.values()), (s, importance)
        for grp in shortcut_groups(m.module_defs):  # one mask per shortcut group
            assert len({after[i] for i in grp}) == 1
        for i in r.graph.must_keep_convs():
            assert after[i] == before[i]
        assert r.report["importance"] == importance


def test_target_flops_with_each_criterion():
    for seed in range(4):
        m = random_model(seed)
        g = build_graph(m.module_defs)
        for imp in ("bn", "l1", "rank"):
            sc = rank_scores(m, g, images(seed)) if imp == "rank" else None
            r = prune_model(m, PruneOptions(importance=imp, target_flops=0.6), check=False, scores=sc)
            assert r.report["flops"]["after"] <= 0.6 * r.report["flops"]["before"]


def test_l1_is_bn_scaled_filter_norm_per_layer_mean_one():
    m = random_model(2)
    g = build_graph(m.module_defs)
    sc = l1_scores(m, g)
    for i, c in conv_layers(m):
        nodes = g.conv_nodes[i]
        if c.bn is None:
            assert np.isnan(sc[nodes]).all()
            continue
        w = c.conv.weight.detach().double()
        ref = np.array([float(w[o].abs().sum() * c.bn.weight[o].detach().abs() /
                              math.sqrt(float(c.bn.running_var[o]) + c.bn.eps))
                        for o in range(w.shape[0])])
        ref /= ref.mean()
        assert np.abs(sc[nodes] - ref).max() <= 1e-9
        assert abs(sc[nodes].mean() - 1.0) <= 1e-9


def test_rank_deterministic_and_bounded():
    m = random_model(4)
    g = build_graph(m.module_defs)
    x = images(4, 4)
    a, b = rank_scores(m, g, x), rank_scores(m, g, x.clone())
    assert np.array_equal(a, b, equal_nan=True)
    ok = ~np.isnan(a)
    assert (a[ok] >= 0).all() and (a[ok] < 1 + 0.5 / 4).all()
    # a channel whose BN γ is 0 outputs the constant act(β): rank <= 1 of min(H, W)
    i = next(i for i, c in conv_layers(m) if c.bn is not None)
    with torch.no_grad():
        m.module_list[i].bn.weight[0] = 0
    c = rank_scores(m, g, x)
    hw = min(layer_shapes(m.module_defs, (64, 64))[i][1:])
    first = c[g.conv_nodes[i][0]]
    assert first <= (1 + 0.49 / 4) / hw and first < c[g.conv_nodes[i][1:]].max()


def test_rank_images_from_data_are_fixed(tmp_path):
    from yolo_slim.data.synthetic import make_shapes_dataset
    data = make_shapes_dataset(str(tmp_path / "s"), 6, 2, 64, 0)
    a, b = rank_images(data, 64, 2, 2), rank_images(data, 64, 2, 2)
    assert a.shape == (4, 3, 64, 64) and torch.equal(a, b)
    m = random_model(1)
    g = build_graph(m.module_defs)
    s1 = node_scores(m, g, "rank", data, (64, 64), batches=2, batch_size=2)
    s2 = node_scores(m, g, "rank", data, (64, 64), batches=2, batch_size=2)
    assert np.array_equal(s1, s2, equal_nan=True)
    with pytest.raises(YoloSlimError, match="needs --data"):
        node_scores(m, g, "rank")


def test_group_score_is_max_over_members():
    """slim: a shortcut-group channel is kept iff the max of its members' scores >= threshold."""
    for seed in range(12):
        m = random_model(seed)
        g = build_graph(m.module_defs)
        groups = shortcut_groups(m.module_defs)
        if not groups:
            continue
        sc = l1_scores(m, g)
        thr = float(np.nanmedian(sc))
        r = prune_model(m, PruneOptions(importance="l1", threshold=thr), check=False)
        for grp in groups:
            member = np.stack([sc[g.conv_nodes[i]] for i in grp])
            kept = r.keep_node[g.conv_nodes[grp[0]]]
            raised = r.report["raised_by_floor_or_rounding"]
            if not any(i in raised for i in grp):
                assert (kept == (np.nanmax(member, 0) >= thr)).all(), (seed, grp)
        return
    pytest.fail("no random net with a shortcut group")


@pytest.mark.parametrize("seed", range(6))
def test_layer_ratios_cut_per_unit_and_stay_exact(seed):
    m = random_model(seed)
    g = build_graph(m.module_defs)
    solver = MaskSolver(g, node_scores(m, g, "bn"), "slim")
    units = solver.units()
    ratios = {u[0]: [0.25, 0.5, 0.75][k % 3] for k, u in enumerate(units)}
    keep = solver.ratio_keep(ratios, enforce=False)
    cuttable = solver.cuttable_roots()
    for k, u in enumerate(units):
        roots = np.unique(np.concatenate([g.root[g.conv_nodes[i]] for i in u]))
        roots = roots[cuttable[roots]]
        n_cut = int((~keep[roots]).sum())
        assert n_cut == min(len(roots), math.floor(ratios[u[0]] * len(roots) + 0.5))
    r = prune_model(m, PruneOptions(layer_ratios=ratios))
    assert r.report["verification"]["rel_vs_folded"] <= 1e-5
    assert math.isnan(r.threshold)
    with pytest.raises(YoloSlimError, match="not prunable|not a conv"):
        solver.ratio_keep({next(iter(g.must_keep_convs() or {-5: 0})): 0.5})


def test_cli_importance_and_layer_ratios(tmp_path, run_script):
    import prune_channels
    cfg, wts, m = write_random_net(tmp_path, 3)
    args = ["--cfg", str(cfg), "--weights", str(tmp_path / "n.weights")]
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "a"), "--importance", "l1",
                                       "--target-flops", "0.5"]) == 0
    rep = json.loads((tmp_path / "a" / "prune_report.json").read_text())
    assert rep["importance"] == "l1" and rep["flops"]["after"] <= 0.5 * rep["flops"]["before"]
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "b"), "--importance", "rank",
                                       "--global-percent", "0.3"]) == 2  # rank needs --data
    g = build_graph(m.module_defs)
    unit = MaskSolver(g, node_scores(m, g), "slim").units()[0]
    (tmp_path / "r.json").write_text(json.dumps({"layers": {str(unit[0]): 0.5}}))
    rc, out, err = run_script("prune_channels.py", *args, "--output-dir", tmp_path / "c",
                              "--layer-ratios", tmp_path / "r.json")
    assert rc == 0, err
    rep = json.loads((tmp_path / "c" / "prune_report.json").read_text())
    for i in unit:
        assert rep["channels"]["after"][str(i)] < rep["channels"]["before"][str(i)]
    changed = {int(i) for i, c in rep["channels"]["after"].items() if c != rep["channels"]["before"][i]}
    assert changed == set(unit)
    (tmp_path / "bad.json").write_text('{"layers": {"1": 1.5}}')
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "d"),
                                       "--layer-ratios", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "bad2.json").write_text("{not json")
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "e"),
                                       "--layer-ratios", str(tmp_path / "bad2.json")]) == 2
