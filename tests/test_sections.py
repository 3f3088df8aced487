"""The section registry: the section types added for the real AlexeyAB cfgs ([sam],
[scale_channels], [reorg3d], [avgpool], [dropout], partial-channel [shortcut]) compute what
darknet computes (references written from darknet-format.md, independently of the modules), and
prune exactly — compact == folded to float rounding, and with dead channels (γ = β = 0) the
compact model equals the unpruned one at every pixel, borders included. A section type added in a
test file alone builds, prunes, counts FLOPs and exports (the one-file promise)."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from cfgs import conv_section, head_sections, max_abs, net_section, raw, shortcut_section, tol
from netgen import random_model
from yolo_slim.analysis.cost import conv_flops_table, layer_shapes
from yolo_slim.analysis.graph import build_graph
from yolo_slim.core.errors import CfgError
from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.nn.model import Darknet
from yolo_slim.prune.channels import PruneOptions, prune_model
from yolo_slim.prune.layer_run import prune_layers_model
from yolo_slim.sections import SECTIONS, register
from yolo_slim.darknet.cfg import get_str
from yolo_slim.sections.activations import activation_module
from yolo_slim.sections.base import Section, SectionModule, Shapes, activation_of, nonlinear_join


def outputs_of(m: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output (heads: their input), as forward_raw computes them."""
    outs: list[torch.Tensor] = []
    with torch.no_grad():
        for i, mod in enumerate(m.module_list):
            y = mod(x, outs)
            x = x if i in m.yolo_layers else y
            outs.append(x)
    return outs


def test_partial_shortcut_is_darknets_flat_buffer_add():
    # layer 2 adds 8 channels into 6 (the first 6 count); layer 4 adds 6 into 4? no: 6 into 4
    # takes the first 4; layer 6 adds 4 channels into the first 4 of 8
    text = (net_section(32) + conv_section(8) + conv_section(6) + shortcut_section(-2, "leaky")
            + conv_section(4, 1) + shortcut_section(-3) + conv_section(8) + shortcut_section(-2)
            + head_sections(1, ((8, 8),)))
    m = random_model(0, text)
    x = torch.rand(1, 3, 32, 32)
    o = outputs_of(m, x)
    leaky = lambda t: np.where(t > 0, t, 0.1 * t)  # noqa: E731
    a = [t[0].numpy() for t in o]
    np.testing.assert_allclose(a[2], leaky(a[1] + a[0][:6]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a[4], a[3] + a[1][:4], rtol=1e-6, atol=1e-6)
    want = a[5].copy()
    want[:4] += a[4]
    np.testing.assert_allclose(a[6], want, rtol=1e-6, atol=1e-6)


def test_sam_scale_channels_reorg3d_avgpool_dropout_forward():
    text = (net_section(32) + conv_section(8) + conv_section(8, 1, act="logistic")
            + "[sam]\nfrom=-2\n"                                   # 2 = 0 ⊙ 1
            + "[avgpool]\n" + conv_section(4, 1) + conv_section(8, 1, act="logistic")
            + "[scale_channels]\nfrom=-4\n"                        # 6 = 2 · 5[c]
            + "[dropout]\nprobability=0.3\n"
            + "[reorg3d]\nstride=2\n" + head_sections(1, ((8, 8),)))
    m = random_model(1, text)
    x = torch.rand(2, 3, 32, 32)
    a = [t.numpy() for t in outputs_of(m, x)]
    np.testing.assert_allclose(a[2], a[1] * a[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a[3], a[2].mean((2, 3), keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a[6], a[2] * a[5], rtol=1e-6, atol=1e-7)
    assert np.array_equal(a[7], a[6])  # dropout: identity in eval mode
    c, s = 8, 2
    ref = np.zeros((2, c * s * s, 16, 16), np.float32)
    for dy in range(s):  # darknet-format.md: out[(dy·s+dx)·C + c][y][x] = in[c][y·s+dy][x·s+dx]
        for dx in range(s):
            ref[:, (dy * s + dx) * c:(dy * s + dx + 1) * c] = a[7][:, :, dy::s, dx::s]
    assert np.array_equal(a[8], ref)
    assert [sh[0] for sh in layer_shapes(m.module_defs, (32, 32))] == [8, 8, 8, 8, 4, 8, 8, 8, 32, 6, 6]


@pytest.mark.parametrize("middle,pattern", [
    ("[sam]\nfrom=-2\n", r"multiplies layer 0 \(4, 32, 32\) with the previous layer's \(8, 32, 32\)"),
    ("[scale_channels]\nfrom=-2\n", r"previous layer must be a 1x1 map"),
    ("[scale_channels]\nfrom=-3\nscale_wh=1\n", r"scale_wh=1 is not supported \(a spatial scale map\)"),
    ("[reorg3d]\nstride=3\n", r"stride=3 must be at least 1 and divide the 32x32 input"),
    ("[reorg3d]\nstride=2\nreverse=1\n", r"reverse=1 is not supported"),
    ("[dropout]\nprobability=1\n", r"probability=1.0 must be in \[0, 1\)"),
])
def test_new_sections_refuse_what_cannot_run(middle, pattern):
    text = net_section(32) + conv_section(4) + conv_section(8) + middle + head_sections(1, ((8, 8),))
    with pytest.raises(CfgError, match=pattern):
        Darknet(parse_cfg_text(text, "n.cfg"))


# every new section type, partial shortcuts both ways, and one removable residual block
ALL_NEW = (net_section(64)
           + conv_section(8, 3, 2)                                   # 0
           + conv_section(6)                                         # 1
           + shortcut_section(-2, "leaky")                           # 2: 8 into 6
           + conv_section(4, 1)                                      # 3
           + shortcut_section(-3)                                    # 4: 6 into 4
           + conv_section(8, act="mish")                             # 5
           + shortcut_section(-2)                                    # 6: 4 into 8
           + conv_section(8, 1, act="logistic")                      # 7
           + "[sam]\nfrom=-2\n"                                      # 8
           + "[avgpool]\n" + conv_section(4, 1) + conv_section(8, 1, act="logistic")  # 9-11
           + "[scale_channels]\nfrom=-4\n"                           # 12
           + "[dropout]\nprobability=0.1\n"                          # 13
           + "[reorg3d]\nstride=2\n"                                 # 14
           + conv_section(16)                                        # 15
           + conv_section(8, 1) + conv_section(16) + shortcut_section(-3)  # 16-18: a block
           + head_sections(2, ((8, 8), (16, 16))))


def kill_classes(m: Darknet, fraction: float, seed: int = 0) -> np.ndarray:
    """Make `fraction` of the prunable classes dead: γ = β = 0 in every conv channel of the
    class (what proximal sparse training leaves). Returns the per-node keep vector."""
    g = build_graph(m.module_defs)
    must = g.class_must_keep()
    roots = sorted({int(g.root[n]) for i, ns in g.conv_nodes.items() if g.has_bn(i)
                    for n in ns if not must[n]})
    rng = np.random.default_rng(seed)
    dead_roots = set(rng.choice(roots, int(len(roots) * fraction), replace=False).tolist())
    keep = ~np.isin(g.root, list(dead_roots))
    with torch.no_grad():
        for i, nodes in g.conv_nodes.items():
            cut = torch.from_numpy(~keep[nodes])
            if cut.any():
                m.module_list[i].bn.weight[cut] = 0
                m.module_list[i].bn.bias[cut] = 0
    return keep


def test_new_sections_prune_exactly():
    m = random_model(3, ALL_NEW)
    x = torch.rand(1, 3, 64, 64)
    res = prune_model(m, PruneOptions(global_percent=0.4, img_size=(64, 64)))
    v = res.report["verification"]
    assert v["max_abs_vs_folded"] <= tol(raw(res.folded, x))
    assert max_abs(raw(res.compact, x), raw(res.folded, x)) <= tol(raw(res.folded, x))
    after = res.report["channels"]["after"]
    assert after[0] < 8 and after[1] < 6  # classes tied through sam, scale and partial adds were cut
    # the compact cfg's FLOPs are the sum of the conv formula at the kept counts
    shapes = layer_shapes(res.compact.module_defs, (64, 64))
    want = sum(2 * shapes[i][1] * shapes[i][2] * mod.conv.weight.numel()
               for i, mod in enumerate(res.compact.module_list) if hasattr(mod, "conv"))
    assert sum(conv_flops_table(res.compact.module_defs, (64, 64)).values()) == want


def test_dead_channels_cut_for_free_through_every_new_section():
    m = random_model(4, ALL_NEW)
    keep = kill_classes(m, 0.5)
    res = prune_model(m, PruneOptions(threshold=1e-30, img_size=(64, 64)))
    assert np.array_equal(res.keep_node | ~keep, np.ones_like(keep))  # every dead class went
    x = torch.rand(2, 3, 64, 64)
    ref = raw(m, x)  # the unmasked model: nothing zeroed beyond what training left
    assert max_abs(raw(res.compact, x), ref) <= tol(ref)
    assert res.report["verification"]["max_abs_vs_masked_unfolded"] <= tol(ref)
    assert res.report["params"]["after"] < 0.8 * res.report["params"]["before"]


def test_block_removal_through_new_sections():
    m = random_model(5, ALL_NEW)
    lres = prune_layers_model(m, 1, img_size=(64, 64))
    assert [b.shortcut for b in lres.removed] == [18]
    # the partial-channel adds stay, each with its reason
    assert lres.report["not_removable"] == {
        2: "from=-2 is not the single layer s-3", 6: "from=-2 is not the single layer s-3",
        4: "the two layers before it are not both [convolutional]"}
    v = lres.report["verification"]
    assert v["max_abs_vs_folded"] <= 1e-5 * v["max_abs_output"] + 1e-6


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_new_sections_export_to_onnx(tmp_path, fraction):
    from yolo_slim.deploy.export import export_onnx
    m = random_model(6, ALL_NEW)
    if fraction:
        kill_classes(m, fraction)
        m = prune_model(m, PruneOptions(threshold=1e-30, img_size=(64, 64))).compact
    rep = export_onnx(m, str(tmp_path / "m.onnx"), img_size=64)
    assert rep["max_abs_delta"] <= 1e-3


# ---- the one-file promise: a section type defined here, nowhere else --------------------------

class _Activation(SectionModule):
    def __init__(self, name: str):
        super().__init__()
        self.name, self.act = name, activation_module(name)

    def forward(self, x: torch.Tensor, outputs=None) -> torch.Tensor:
        return self.act(x)


class ActivationSection(Section):
    """darknet's [activation] (activation=linear): out = act(x), channels pass through. Its
    rules beyond the defaults: a dead channel's constant c becomes act(c); an offset on a live
    channel passes only through a linear activation."""
    type = "activation"

    def build(self, d: dict[str, Any], i: int, shapes: Shapes) -> _Activation:
        return _Activation(activation_of(d, "linear"))

    def propagate(self, d, i, m, fc):
        return nonlinear_join(fc, i, [fc.carry(i - 1)], lambda offs: offs[0], m.name, "[activation]") \
            if m.name != "linear" else fc.carry(i - 1)

    def passes_offset(self, d):
        act = get_str(d, "activation", "linear")
        return None if act == "linear" else f"activation={act}"


@pytest.fixture
def activation_registered():
    assert "activation" not in SECTIONS  # this test is the only place that knows the type
    register(ActivationSection)
    yield
    SECTIONS.pop("activation")


def test_a_new_section_type_is_one_file(activation_registered):
    text = (net_section(32) + conv_section(8) + "[activation]\nactivation=mish\n"    # 0, 1
            + conv_section(8) + conv_section(4, 1) + conv_section(8) + shortcut_section(-3)  # 2-5
            + "[activation]\nactivation=linear\n"                                       # 6
            + conv_section(8) + conv_section(4, 1) + conv_section(8) + shortcut_section(-3)  # 7-10
            + "[activation]\nactivation=leaky\n"                                        # 11
            + conv_section(8) + head_sections(1, ((8, 8),)))
    m = random_model(7, text)
    x = torch.rand(1, 3, 32, 32)
    o = outputs_of(m, x)
    assert torch.allclose(o[1], torch.nn.functional.mish(o[0]))
    res = prune_model(m, PruneOptions(global_percent=0.5, img_size=(32, 32)))
    assert res.report["verification"]["max_abs_vs_folded"] <= tol(raw(res.folded, x))
    blocks_ok = prune_layers_model(m, 1, img_size=(32, 32))
    # block 5's constant passes the linear [activation] 6 to conv 7; block 10's meets leaky 11
    assert blocks_ok.report["not_removable"] == {10: "its constant reaches [activation] 11: activation=leaky"}
    assert [b.shortcut for b in blocks_ok.removed] == [5]
    assert blocks_ok.report["verification"]["max_abs_vs_folded"] <= tol(raw(blocks_ok.folded, x))
    assert sum(conv_flops_table(m.module_defs, (32, 32)).values()) == 2 * 32 * 32 * (
        8 * 3 * 9 + 8 * 8 * 9 + 4 * 8 + 8 * 4 * 9 + 8 * 8 * 9 + 4 * 8 + 8 * 4 * 9 + 8 * 8 * 9 + 6 * 8)


def test_prune_channels_dead_cuts_exactly_the_dead_channels(tmp_path):
    """prune_channels.py --dead: every dead class goes, no live one, and the written model
    computes what the unpruned one does at every pixel (the cut is free)."""
    import json

    import prune_channels
    from yolo_slim.darknet.cfg import parse_cfg
    from yolo_slim.nn.weights import load_darknet_weights, save_darknet_weights
    m = random_model(8, ALL_NEW)
    keep = kill_classes(m, 0.4, seed=1)
    (tmp_path / "n.cfg").write_text(ALL_NEW)
    save_darknet_weights(m, str(tmp_path / "n.weights"))
    out = tmp_path / "out"
    assert prune_channels.main(["--cfg", str(tmp_path / "n.cfg"), "--weights", str(tmp_path / "n.weights"),
                                "--output-dir", str(out), "--dead"]) == 0
    rep = json.loads((out / "prune_report.json").read_text())
    g = build_graph(m.module_defs)
    n_dead_convs = sum(int((~keep[n]).sum()) for i, n in g.conv_nodes.items())
    assert sum(rep["channels"]["before"][k] - rep["channels"]["after"][k]
               for k in rep["channels"]["before"]) == n_dead_convs
    assert rep["dead"]["dead_deciders"] > 0 and rep["dead"]["live_cut_by_percent"] > 0
    pruned = Darknet(parse_cfg(str(out / "n.cfg"))).eval()
    load_darknet_weights(pruned, str(out / "n.weights"))
    x = torch.rand(2, 3, 64, 64)
    ref = raw(m, x)
    assert max_abs(raw(pruned, x), ref) <= tol(ref)
    assert rep["verification"]["max_abs_vs_masked_unfolded"] <= tol(ref)
    from yolo_slim.prune.channels import cut_rule  # titles and summaries say so, not "threshold nan"
    assert cut_rule(rep["threshold"]) == "dead channels only" and cut_rule(0.05) == "threshold 0.05"
    # --round-to 4 keeps dead channels (exact zeros) to reach multiples of 4: still the same model
    out4 = tmp_path / "out4"
    assert prune_channels.main(["--cfg", str(tmp_path / "n.cfg"), "--weights", str(tmp_path / "n.weights"),
                                "--output-dir", str(out4), "--dead", "--round-to", "4"]) == 0
    rep4 = json.loads((out4 / "prune_report.json").read_text())
    before, after, after1 = rep4["channels"]["before"], rep4["channels"]["after"], rep["channels"]["after"]
    assert all(after[k] % 4 == 0 or after[k] == before[k] for k in after)
    assert all(after1[k] <= after[k] <= before[k] for k in after) and after != after1
    pruned4 = Darknet(parse_cfg(str(out4 / "n.cfg"))).eval()
    load_darknet_weights(pruned4, str(out4 / "n.weights"))
    assert max_abs(raw(pruned4, x), ref) <= tol(ref)


def test_maxpool_equals_darknet_padding_without_a_pad_where_it_can():
    """[maxpool] is darknet's: -inf padding, left/top gets padding//2. The module skips the
    explicit pad where the padded cells are never read (size 2 stride 2 on an even map) and uses
    the pool's own implicit -inf padding where it is symmetric (SPP's 5/9/13 stride 1); every
    case equals pad-then-pool exactly, and an exported even-map size-2 pool has no Pad node."""
    import torch.nn.functional as F
    from yolo_slim.sections.maxpool import MaxPool
    g = torch.Generator().manual_seed(0)
    for size, stride, padding in [(2, 2, 1), (2, 1, 1), (3, 2, 2), (5, 1, 4), (9, 1, 8), (13, 1, 12),
                                  (3, 1, 2), (2, 2, 0), (3, 3, 1), (4, 2, 3)]:
        m = MaxPool(size, (stride, stride), padding)
        for h, w in [(13, 13), (16, 16), (15, 22), (26, 27)]:
            x = torch.randn(2, 3, h, w, generator=g) - 5.0  # all negative: a 0 pad would win
            lo = padding // 2
            ref = F.max_pool2d(F.pad(x, (lo, padding - lo, lo, padding - lo), value=float("-inf")),
                               size, stride)
            assert torch.equal(m(x), ref), (size, stride, padding, h, w)
    import io
    import warnings
    import onnx
    for size, stride, padding in [(2, 2, 1), (5, 1, 4)]:  # padding never read / symmetric (SPP)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's note that the map size is a constant
            torch.onnx.export(MaxPool(size, (stride, stride), padding).eval(), (torch.randn(1, 4, 16, 16),),
                              buf, dynamo=False, opset_version=13)
        ops = [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node]
        assert ops == ["MaxPool"], (size, stride, padding, ops)
