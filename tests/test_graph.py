"""The channel graph (shortcut groups, route slices, must-keep convs) and report.py's counting."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import random_darknet, randomize_bn  # noqa: E402

from yolo_slim.darknet.cfg import parse_cfg, parse_cfg_text  # noqa: E402
from yolo_slim.analysis.graph import build_graph, describe, main, prunable_convs, shortcut_groups  # noqa: E402
from yolo_slim.nn.model import Darknet, conv_geometry  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.analysis.cost import (cfg_flops, count_params, layer_shapes, model_flops,  # noqa: E402
                              plot_channels, plot_gamma_hist)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs on a shared 2-core box: ~10x faster single-threaded
    yield
    torch.set_num_threads(n)


def corpus_defs(corpus_dir, name):
    local = Path(__file__).resolve().parents[1] / "cfg" / f"{name}.cfg"
    return parse_cfg(str(local if local.is_file() else corpus_dir / "AlexeyAB" / f"{name}.cfg"))


def test_yolov3_shortcut_groups(corpus_dir):
    defs = corpus_defs(corpus_dir, "yolov3")
    groups = shortcut_groups(defs)
    # 5 residual stages of 1, 2, 8, 8, 4 blocks; each group = the stride-2 conv + every block's 3x3
    assert [len(g) for g in groups] == [2, 3, 9, 9, 5]
    for g in groups:
        assert conv_geometry(defs[g[0] + 1])["stride_x"] == 2
        assert all(conv_geometry(defs[i + 1])["size"] == 3 for i in g)
    members = {i for g in groups for i in g}
    normal, slim = prunable_convs(defs, "normal"), prunable_convs(defs, "slim")
    assert not members & set(normal)
    assert members <= set(slim) and set(normal) < set(slim)
    assert prunable_convs(defs, "shortcut") == slim
    g = build_graph(defs)
    heads = g.must_keep_convs()
    assert sorted(heads) == [i - 1 for i, d in enumerate(defs[1:]) if d["type"] == "yolo"]
    assert set(heads.values()) == {"no batch_normalize"}
    with pytest.raises(ValueError):
        prunable_convs(defs, "bogus")


def test_yolov4_tiny_route_slices(corpus_dir):
    defs = corpus_defs(corpus_dir, "yolov4-tiny")
    g = build_graph(defs)
    assert [(r, j, grp, gid) for r, j, grp, gid in g.route_slices] == [(3, 2, 2, 1), (11, 10, 2, 1),
                                                                          (19, 18, 2, 1)]
    # the sliced producers stay prunable: channel c is tied to c + C/2
    for _, j, _, _ in g.route_slices:
        nodes = g.conv_nodes[j]
        half = len(nodes) // 2
        assert (g.root[nodes[:half]] == g.root[nodes[half:]]).all()
        assert j in prunable_convs(defs, "normal")
    assert shortcut_groups(defs) == []


def test_graph_matches_builder_channels(corpus_dir):
    """Every layer carries as many channels as the model builder says, on random nets and the
    standard cfgs; and layer_shapes agrees with a real forward."""
    cases = [parse_cfg_text(random_darknet(s)) for s in range(15)]
    cases += [corpus_defs(corpus_dir, n) for n in ("yolov3-tiny", "yolov4-tiny", "yolov3-spp")]
    for defs in cases:
        g = build_graph(defs)
        m = Darknet(defs)
        assert [len(n) for n in g.layer_nodes] == m.out_channels
    for s in range(5):
        m = Darknet(parse_cfg_text(random_darknet(s))).eval()
        shapes = []
        hooks = [mod.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape[1:])))
                 for mod in m.module_list[:-1] if not mod.__class__.__name__ == "YOLOLayer"]
        with torch.no_grad():
            m.forward_raw(torch.zeros(1, 3, 64, 48))
        for h in hooks:
            h.remove()
        want = [sh for sh, d in zip(layer_shapes(m.module_defs, (64, 48)), m.module_defs[1:-1])
                if d["type"] != "yolo"]
        assert shapes == want


def test_concat_into_shortcut_and_grouped_conv():
    """A shortcut over a concat ties channels of two different convs; a grouped conv and its
    inputs stay whole; pruning still computes the same function."""
    cfg = """[net]
width=32
height=32
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=4
size=1
activation=leaky
[route]
layers=-1,-2
[convolutional]
batch_normalize=1
filters=8
size=3
pad=1
activation=mish
[shortcut]
from=-2
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=3
pad=1
groups=2
activation=leaky
[convolutional]
batch_normalize=1
filters=6
size=1
activation=swish
[convolutional]
size=1
filters=7
activation=linear
[yolo]
mask=0
anchors=4,4
classes=2
num=1
"""
    defs = parse_cfg_text(cfg)
    assert shortcut_groups(defs) == [[0, 1, 3]]
    g = build_graph(defs)
    keep = g.must_keep_convs()
    assert keep[5] == "grouped conv (groups=2)"
    assert keep[0].startswith("tied to layer") and keep[1].startswith("tied to layer")
    assert keep[3].startswith("tied to layer") and keep[7] == "no batch_normalize"
    assert prunable_convs(defs, "slim") == [6]
    m = Darknet(defs).eval()
    randomize_bn(m, 0)
    r = prune_model(m, PruneOptions(strategy="slim", global_percent=0.5))
    assert r.compact.module_list[6].conv.out_channels == 3
    assert r.report["verification"]["rel_vs_folded"] < 1e-5
    text = describe(defs)
    assert "shortcut groups" in text and "[0, 1, 3]" in text and "5: grouped conv" in text


def test_yolo_fed_by_bn_conv_is_kept():
    cfg = random_darknet(2).replace("[convolutional]\nfilters=21\nsize=1\nstride=1\npad=1\n"
                                    "activation=linear",
                                    "[convolutional]\nbatch_normalize=1\nfilters=21\nsize=1\n"
                                    "stride=1\npad=1\nactivation=linear", 1)
    defs = parse_cfg_text(cfg)
    keep = build_graph(defs).must_keep_convs()
    assert any(v.startswith("feeds [yolo]") for v in keep.values())


def test_cli(corpus_dir, capsys):
    assert main([str(corpus_dir / "AlexeyAB" / "yolov3-tiny.cfg")]) == 0
    out = capsys.readouterr().out
    assert "prunable (slim)" in out and "kept whole" in out and "15: no batch_normalize" in out
    assert main([]) == 2
    assert main(["/nonexistent.cfg"]) == 2


# ---- report.py -----------------------------------------------------------------------------------

def test_flops_match_torch_flop_counter(corpus_dir):
    """Our FLOPs convention (2 x conv multiply-adds) equals torch's FlopCounterMode, which counts
    only the convs in these networks; the cfg arithmetic gives the same number without a model."""
    defs_list = [parse_cfg_text(random_darknet(s)) for s in range(4)]
    defs_list.append(corpus_defs(corpus_dir, "yolov4-tiny"))
    for defs in defs_list:
        m = Darknet(defs).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m.forward_raw(torch.zeros(1, 3, 64, 96))
        assert model_flops(m, (64, 96)) == fc.get_total_flops() == cfg_flops(defs, (64, 96))
        assert count_params(m) == sum(p.numel() for p in m.parameters())
    # hand count: yolov4-tiny layer 0 is a 3x3 stride-2 conv 3->32 at 64x96 -> 32x48
    assert 2 * 32 * 48 * 32 * 3 * 9 == 2 * 32 * 48 * Darknet(defs_list[-1]).module_list[0].conv.weight.numel()


def test_plots(tmp_path):
    plot_channels({0: 32, 1: 64, 5: 128}, {0: 16, 1: 64, 5: 3}, str(tmp_path / "c.png"))
    img = cv2.imread(str(tmp_path / "c.png"))
    assert img is not None and img.shape[0] == 360 and img.shape[2] == 3
    # the blue "after" bar of layer 5 is short: 3/128 of the plot height
    plot_gamma_hist(np.random.default_rng(0).random(1000), str(tmp_path / "g.png"), threshold=0.3)
    img = cv2.imread(str(tmp_path / "g.png"))
    assert img.shape == (320, 640, 3)
    red = (img[:, :, 2] > 200) & (img[:, :, 0] < 50) & (img[:, :, 1] < 50)
    assert red.any()
