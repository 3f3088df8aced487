"""Channel pruning properties over random darknet networks and the five standard cfgs.

Tolerances: outputs are raw head maps of magnitude ~0.5-3 (random BN statistics). The compact
model and the folded full-size model compute the same sums over fewer terms, so they agree to
float32 rounding: we require max |Δ| <= 1e-5 x max |output| + 1e-6 (seen: ~4e-7 relative).
"""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import random_model, standard_model, write_random_net  # noqa: E402
from cfgs import max_abs, raw, read_output_dir, tol  # noqa: E402

from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.analysis.graph import shortcut_groups  # noqa: E402
from yolo_slim.nn.model import Darknet, conv_layers  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.prune.pipeline import run_channels as run  # noqa: E402
from yolo_slim.analysis.cost import model_flops  # noqa: E402

STRATEGIES = ["normal", "shortcut", "slim"]
STANDARD = ["yolov3-tiny", "yolov4-tiny", "yolov3", "yolov3-spp", "yolov4"]
SEEDS = range(12)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny convs on a shared 2-core box are ~10x faster single-threaded
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def conv_counts(m: Darknet) -> dict[int, int]:
    return {i: c.conv.out_channels for i, c in conv_layers(m)}


# ---- random networks ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_random_compact_equals_folded(seed):
    m = random_model(seed)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    for s in STRATEGIES:
        r = prune_model(m, PruneOptions(strategy=s, global_percent=0.3 + 0.1 * (seed % 5),
                                        round_to=[1, 2, 4][seed % 3]))
        ref = raw(r.folded, x)
        assert max_abs(raw(r.compact, x), ref) <= tol(ref), s
        assert r.report["verification"]["rel_vs_folded"] <= 1e-5
        # something was pruned, nothing was emptied, [yolo] inputs untouched
        after = conv_counts(r.compact)
        assert sum(after.values()) < sum(conv_counts(m).values())
        assert min(after.values()) >= 1
        assert [h.shape for h in raw(r.compact, x)] == [h.shape for h in raw(m, x)]


@pytest.mark.parametrize("seed", range(6))
def test_fold_exact_without_borders(seed):
    """With 1x1 convs only there are no zero-padded borders, so the model with the cut channels'
    γ zeroed (outputting act(β)) and *no* folding must equal the compact model: this checks the
    β arithmetic itself (constants through routes, shortcuts, maxpool, upsample)."""
    m = random_model(seed, only_1x1=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    for s in STRATEGIES:
        r = prune_model(m, PruneOptions(strategy=s, global_percent=0.5))
        v = r.report["verification"]
        assert v["max_abs_vs_masked_unfolded"] <= 1e-5 * v["max_abs_output"] + 1e-6, (s, v)


@pytest.mark.parametrize("seed", range(6))
def test_zero_gamma_beta_is_lossless(seed):
    """When the cut channels have γ = β = 0 they output act(0) = 0 (leaky/mish/swish/linear):
    pruning them must not change the model at all."""
    m = random_model(seed)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    for s in STRATEGIES:
        first = prune_model(m, PruneOptions(strategy=s, global_percent=0.4), check=False)
        m2 = copy.deepcopy(m)
        with torch.no_grad():  # zero γ and β of exactly the channels the first pass cut
            for i, nodes in first.graph.conv_nodes.items():
                kept, bn = first.keep_node[nodes], m2.module_list[i].bn
                if bn is not None:
                    bn.weight[torch.from_numpy(~kept)] = 0
                    bn.bias[torch.from_numpy(~kept)] = 0
        r = prune_model(m2, PruneOptions(strategy=s, threshold=1e-12))
        assert (r.keep_node == first.keep_node).all(), s
        assert max_abs(raw(r.compact, x), raw(m2, x)) <= 1e-5, s


def test_target_flops_round_to_layer_keep():
    for seed in range(8):
        m = random_model(seed)
        full = model_flops(m, (64, 64))
        for s, f in zip(STRATEGIES, (0.8, 0.6, 0.5)):
            try:
                r = prune_model(m, PruneOptions(strategy=s, target_flops=f), check=False)
            except Exception as e:  # only acceptable refusal: target below what can be cut
                assert "out of reach" in str(e)
                continue
            assert model_flops(r.compact, (64, 64)) <= f * full
            assert r.report["flops"]["after"] == model_flops(r.compact, (64, 64))
        r = prune_model(m, PruneOptions(strategy="slim", global_percent=0.7, round_to=8,
                                        layer_keep=0.3), check=False)
        before, after = conv_counts(m), conv_counts(r.compact)
        for i, c in after.items():
            assert c == before[i] or c % 8 == 0, (seed, i, c, before[i])
            assert c >= math.ceil(0.3 * before[i]) and c >= 1


def test_tied_gammas_are_cut_to_the_target():
    """An untrained model has every γ = 1: percent and FLOPs targets must still cut to the target
    (by position among the ties), not jump from nothing to everything; --threshold keeps its
    value semantics."""
    from yolo_slim.nn.model import Darknet as D
    from yolo_slim.darknet.cfg import parse_cfg as pc
    cfg = Path(__file__).resolve().parents[1] / "cfg" / "demo.cfg"
    torch.manual_seed(0)
    m = D(pc(str(cfg))).eval()  # fresh init: all |γ| == 1
    gammas = torch.cat([c.bn.weight for _, c in conv_layers(m) if c.bn is not None])
    assert bool((gammas == 1).all())
    full = model_flops(m, (64, 64))
    r = prune_model(m, PruneOptions(target_flops=0.5, img_size=(64, 64)), check=False)
    frac = model_flops(r.compact, (64, 64)) / full
    assert 0.45 <= frac <= 0.5, frac  # the fewest channels that reach the target, not all of them
    assert r.report["threshold"] == 1.0 and 0 < r.report["deciders_cut"]
    r = prune_model(m, PruneOptions(global_percent=0.5, img_size=(64, 64)), check=False)
    before, after = conv_counts(m), conv_counts(r.compact)
    halved = [i for i in before if after[i] == before[i] // 2]
    assert all(after[i] == before[i] for i in before if i not in halved)  # the heads
    assert len(halved) == len(before) - 2  # a tie is cut evenly: every prunable layer by half
    assert r.report["deciders_cut"] == sum(before[i] for i in halved) // 2
    r = prune_model(m, PruneOptions(threshold=1.0, img_size=(64, 64)), check=False)
    assert conv_counts(r.compact) == conv_counts(m)  # nothing is < 1.0
    assert r.report["deciders_cut"] is None


def test_tied_gammas_cut_evenly_through_route_groups(standard_models):
    """yolov4-tiny slices convs with [route] groups=2 (a class = channels c and c + C/2): with
    every |γ| tied, a percent cut still takes the same share from every prunable conv."""
    from yolo_slim.analysis.graph import build_graph
    from yolo_slim.prune.masks import MaskSolver
    m = standard_models["yolov4-tiny"]
    g = build_graph(m.module_defs)
    solver = MaskSolver(g, np.ones(len(g.root)), "slim")
    keep = solver.keep(0.0, n_cut=solver.percent_cut(0.4), enforce=False)
    for i in solver.prunable:
        nodes = g.conv_nodes[i]
        frac_cut = 1 - keep[nodes].mean()
        assert abs(frac_cut - 0.4) <= 2 / len(nodes) + 0.02, (i, frac_cut)


def test_everything_cut_keeps_one_channel():
    m = random_model(3)
    r = prune_model(m, PruneOptions(strategy="slim", threshold=1e9, round_to=4), check=False)
    for i, c in conv_counts(r.compact).items():
        assert c >= 1 and (c == conv_counts(m)[i] or c % 4 == 0)


# ---- the five standard cfgs --------------------------------------------------------------------

@pytest.fixture(scope="module")
def standard_models(corpus_dir):
    return {name: standard_model(name, corpus_dir) for name in STANDARD}


@pytest.mark.parametrize("name", STANDARD)
def test_standard_cfgs(standard_models, name):
    m = standard_models[name]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    groups = shortcut_groups(m.module_defs)
    assert bool(groups) == (name in ("yolov3", "yolov3-spp", "yolov4"))
    for s in STRATEGIES:
        r = prune_model(m, PruneOptions(strategy=s, global_percent=0.5, layer_keep=0.05,
                                        round_to=8 if s == "slim" else 1))
        ref = raw(r.folded, x)
        assert max_abs(raw(r.compact, x), ref) <= tol(ref), s
        assert r.report["params"]["after"] < r.report["params"]["before"]
        before, after = conv_counts(m), conv_counts(r.compact)
        for grp in groups:  # one mask per shortcut group; "normal" leaves the groups whole
            assert len({after[i] for i in grp}) == 1, (s, grp)
            if s == "normal":
                assert all(after[i] == before[i] for i in grp)
        if groups and s != "normal":
            assert any(after[g[0]] < before[g[0]] for g in groups), s
        for i in r.graph.must_keep_convs():  # the head convs before [yolo] etc.
            assert after[i] == before[i]
        if s == "slim":
            assert all(after[i] == before[i] or after[i] % 8 == 0 for i in after)
    r = prune_model(m, PruneOptions(strategy="slim", target_flops=0.4), check=False)
    assert r.report["flops"]["after"] <= 0.4 * r.report["flops"]["before"]


# ---- files --------------------------------------------------------------------------------------

def test_run_writes_exact_darknet_files(tmp_path):
    cfg, wts, m = write_random_net(tmp_path, 5, stem="net")
    out = tmp_path / "out"
    rep = run(str(cfg), str(wts), str(out), PruneOptions(strategy="slim", global_percent=0.5),
              log=lambda *a: None)
    # an independent reader: header 0,2,5 + int64 seen, then exactly the floats the cfg needs
    back = read_output_dir(out, {"net.pt", "prune_report.json", "channels.png", "gamma_hist.png"})
    x = torch.rand(1, 3, 64, 64)
    pruned = prune_model(m, PruneOptions(strategy="slim", global_percent=0.5), check=False)
    assert max_abs(raw(back, x), raw(pruned.compact, x)) == 0.0
    assert rep["verification"]["max_abs_reloaded"] == 0.0
    saved = json.loads((out / "prune_report.json").read_text())
    assert saved["verification"]["max_abs_vs_folded"] <= 1e-5 * saved["verification"]["max_abs_output"]
    kept = saved["manifest"]["kept_channels"]
    for i, c in conv_layers(back):
        if str(i) in kept:
            assert len(kept[str(i)]) == c.conv.out_channels < conv_counts(m)[i]
    # the written cfg differs from the input only in filters= of pruned convs
    d0, d1 = parse_cfg(str(cfg)), parse_cfg(str(out / "net.cfg"))
    for a, b in zip(d0, d1):
        diff = {k for k in set(a) | set(b) if not k.startswith("_") and a.get(k) != b.get(k)}
        assert diff <= {"filters"}
    man = rep["manifest"]
    assert man["strategy"] == "slim" and len(man["cfg_sha256"]) == 64 and len(man["weights_sha256"]) == 64
    assert set(man["kept_channels"]) == {i for i, c in rep["channels"]["after"].items()
                                         if c != rep["channels"]["before"][i]}


def test_cli_errors(tmp_path, run_script):
    cfg, wts, m = write_random_net(tmp_path, 1)
    import prune_channels
    args = ["--cfg", str(cfg), "--weights", str(tmp_path / "n.weights")]
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "o"), "--global-percent", "0.5",
                                       "--threshold", "0.1"]) == 2
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "o"), "--global-percent", "1.5"]) == 2
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "o"), "--target-flops", "0.0001"]) == 2
    assert prune_channels.main(["--cfg", str(tmp_path / "missing.cfg"), "--weights", "x.weights",
                                "--output-dir", str(tmp_path / "o"), "--threshold", "0.1"]) == 2
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "other.cfg").write_text("[net]\n")
    assert prune_channels.main(args + ["--output-dir", str(tmp_path / "o2"), "--threshold", "0.1"]) == 2
    rc, out, err = run_script("prune_channels.py", *args, "--output-dir", tmp_path / "o3",
                              "--strategy", "shortcut", "--global-percent", "0.4", "--round-to", "2")
    assert rc == 0, err
    assert "max |delta| compact vs folded" in out and "largest threshold that empties no layer" in out
