"""Layer pruning (residual blocks) over random residual networks and yolov3 / yolov3-spp / yolov4.

Models compared (yolo_slim/prune/layers.py): *folded* = original with the removed blocks' conv2
γ = β = 0 and their constant act(β₂) folded into the absorbing convs; *masked* = original with
only γ₂ = 0; *compact* = the folded model without the blocks. compact vs folded must be float
rounding (seen: exactly 0, the ops are identical); we allow 1e-5 x max |output| + 1e-6. compact
vs masked is exact (same tolerance) when every conv is 1x1 (no zero-padded borders).
"""
from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import random_darknet, random_model, standard_model, write_random_net  # noqa: E402
from cfgs import max_abs, raw, read_output_dir, tol  # noqa: E402

from yolo_slim.darknet.cfg import get_ints, parse_cfg  # noqa: E402
from yolo_slim.sections.yolo import YOLOLayer  # noqa: E402
from yolo_slim.nn.model import Darknet, conv_layers, route_sources, shortcut_sources  # noqa: E402
from yolo_slim.prune.channels import PruneOptions  # noqa: E402
from yolo_slim.prune.layer_run import prune_layers_model  # noqa: E402
from yolo_slim.prune.pipeline import run_channels, run_layers as run  # noqa: E402
from yolo_slim.prune.layers import analyze_blocks, compact_blocks  # noqa: E402

STANDARD = ["yolov3", "yolov3-spp", "yolov4"]
QUIET = dict(log=lambda *a: None)


def residual_net(seed: int, size: int = 32, only_1x1: bool = False) -> str:
    """Cfg text of a random residual detector made to stress layer pruning: chains of blocks,
    offsets that pass maxpool (size 2 stride 1), upsample (scale != 1), CSP `groups=2` routes,
    grouped / BN-less absorbers, kept two-source shortcuts, a logistic conv1, absolute and
    relative references to shortcuts (from routes and from shortcuts), and non-removable blocks
    (leaky shortcut, logistic conv2)."""
    rng = random.Random(seed)
    L, ch, n = ["[net]\nwidth=%d\nheight=%d\nchannels=3\n" % (size, size)], [3], [0]

    def add(text: str, c: int) -> int:
        L.append(text)
        ch.append(c)
        n[0] += 1
        return n[0] - 1

    def conv(f, k=3, s=1, bn=True, act=None, groups=1):
        k = 1 if only_1x1 else k
        act = act or rng.choice(["leaky", "mish", "swish", "linear", "relu"])
        g = f"groups={groups}\n" if groups > 1 else ""
        return add(f"[convolutional]\n{'batch_normalize=1' if bn else ''}\nfilters={f}\nsize={k}\n"
                   f"stride={s}\npad=1\n{g}activation={act}\n", f)

    def block(act_s="linear", act2=None, absolute=False):
        c = ch[-1]
        conv(max(2, c // 2), 1, act=rng.choice(["leaky", "logistic", "mish"]))
        conv(c, 3, act=act2)
        frm = str(n[0] - 3) if absolute else "-3"
        return add(f"[shortcut]\nfrom={frm}\nactivation={act_s}\n", c)

    conv(8, 3)
    feats = []
    for stage in range(2):
        conv(8 * 2 ** (stage + 1), 3, s=2)
        if rng.random() < 0.5:  # never removable (the stride-2 conv absorbs what comes before)
            block(act_s="leaky") if rng.random() < 0.5 else block(act2="logistic")
        for _ in range(rng.randint(2, 3)):
            block(absolute=rng.random() < 0.3)
        kind = rng.choice(["maxpool", "upsample", "csp", "grouped", "nobn", "two_source"])
        if kind == "maxpool":
            add("[maxpool]\nsize=2\nstride=1\n", ch[-1])
        elif kind == "upsample":
            add(f"[upsample]\nstride=2\nscale={rng.choice([1, 0.5])}\n", ch[-1])
            conv(ch[-1], 3, s=2)
        elif kind == "csp":
            c = ch[-1]
            add("[route]\nlayers=-1\ngroups=2\ngroup_id=1\n", c // 2)
            conv(c // 2, 1)
            add("[route]\nlayers=-1,-3\n", c // 2 + c)  # the shortcut (relative) + the conv
        elif kind == "grouped":
            conv(ch[-1], 3, groups=2)
        elif kind == "nobn":
            conv(ch[-1], 1, bn=False)
        else:  # a kept shortcut summing two earlier maps of the chain (identity path)
            c = ch[-1]
            conv(c // 2, 1)
            conv(c, 3)
            add(f"[shortcut]\nfrom=-3,{n[0] - 6}\nactivation=linear\n", c)
        feats.append(block(absolute=rng.random() < 0.5))
        if stage == 0 and rng.random() < 0.3:  # a leaky shortcut: it and its chain stay
            block(act_s="leaky")
    conv(ch[-1] // 2, 1)
    branch = n[0] - 1

    def head():
        conv(ch[-1], 3)
        conv(3 * 7, 1, bn=False, act="linear")
        add("[yolo]\nmask=0,1,2\nanchors=4,6,8,10,12,16,20,24,30,32,40,48\nclasses=2\nnum=6\n", 21)

    head()
    add(f"[route]\nlayers={branch - n[0]}\n", ch[branch + 1])
    conv(ch[-1] // 2, 1)
    add("[upsample]\nstride=2\n", ch[-1])
    add(f"[route]\nlayers=-1,{feats[0]}\n", ch[-1] + ch[feats[0] + 1])  # absolute, to a shortcut
    conv(ch[-1] // 2, 3)
    head()
    return "\n".join(L)


@pytest.fixture(scope="module")
def standard_models(corpus_dir):
    return {name: standard_model(name, corpus_dir) for name in STANDARD}


@torch.no_grad()
def all_outputs(m: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    """Output of every layer (what forward_raw computes, but keeping everything)."""
    outs: list[torch.Tensor] = []
    for mod in m.module_list:
        if not isinstance(mod, YOLOLayer):
            x = mod(x, outs)
        outs.append(x)
    return outs


def check_result(m: Darknet, r, x: torch.Tensor) -> None:
    """compact == folded on every surviving tensor; routes/shortcuts read the same tensors."""
    fo, co = all_outputs(r.folded, x), all_outputs(r.compact, x)
    for i, k in r.index.items():  # a removed shortcut maps to its input x: folded has s == x
        assert max_abs([fo[i]], [co[k]]) <= tol([fo[i]]), (i, k)
    old, new = m.module_defs, r.compact.module_defs
    for i in range(len(old) - 1):
        t = old[i + 1]["type"]
        if i not in r.index or t not in ("route", "shortcut") or any(i == b.shortcut for b in r.removed):
            continue
        k = r.index[i]
        src = route_sources if t == "route" else shortcut_sources
        key = "layers" if t == "route" else "from"
        assert src(new[k + 1], k) == [r.index[j] for j in src(old[i + 1], i)], (i, k)
        assert [v < 0 for v in get_ints(new[k + 1], key)] == [v < 0 for v in get_ints(old[i + 1], key)]
    assert len(r.compact.module_list) == len(m.module_list) - 3 * len(r.removed)
    assert len(conv_layers(r.compact)) == len(conv_layers(m)) - 2 * len(r.removed)


# ---- random residual networks --------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(10))
def test_random_compact_equals_folded(seed):
    m = random_model(seed, residual_net(seed))
    blocks, why = analyze_blocks(m.module_defs)
    assert len(blocks) >= 3
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    for n in sorted({1, len(blocks) // 2, len(blocks)}):
        r = prune_layers_model(m, n, rank=["mean", "max"][seed % 2], img_size=(32, 32))
        check_result(m, r, x)
        ref = raw(r.folded, x)
        assert max_abs(raw(r.compact, x), ref) <= tol(ref)
        assert r.report["verification"]["rel_vs_folded"] <= 1e-5
        scores = sorted(r.scores.values())  # the n smallest scores went
        assert sorted(b["score"] for b in r.report["removed_blocks"]) == scores[:n]
    for s, reason in why.items():  # every kept shortcut has a reason the generator planted
        assert any(w in reason for w in ("activation=leaky", "act(0)", "not the single", "reaches"))


@pytest.mark.parametrize("seed", range(6))
def test_fold_exact_without_borders(seed):
    """Only 1x1 convs: no zero padding, so compact == masked (γ₂ = 0, β₂ kept, nothing
    folded): this checks the offset arithmetic through maxpool/upsample/routes/shortcuts."""
    m = random_model(seed, residual_net(seed, only_1x1=True))
    r = prune_layers_model(m, len(analyze_blocks(m.module_defs)[0]), img_size=(32, 32))
    v = r.report["verification"]
    assert v["max_abs_vs_masked_unfolded"] <= 1e-5 * v["max_abs_output"] + 1e-6, v
    # and the folding mattered: dropping the same blocks without it gives another model
    unfolded, _ = compact_blocks(copy.deepcopy(m), r.removed)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    assert max_abs(raw(unfolded, x), raw(r.compact, x)) > 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_zero_gamma_beta_is_lossless(seed):
    """Removed blocks with conv2 γ = β = 0 contribute act(0) = 0: the compact model must equal
    the original (only `x + 0` is skipped, so bit for bit here)."""
    m = random_model(seed, residual_net(seed))
    first = prune_layers_model(m, 3, check=False)
    with torch.no_grad():
        for b in first.removed:
            m.module_list[b.conv2].bn.weight.zero_()
            m.module_list[b.conv2].bn.bias.zero_()
    r = prune_layers_model(m, 3, img_size=(32, 32))
    assert [b.shortcut for b in r.removed] == [b.shortcut for b in first.removed]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    assert max_abs(raw(r.compact, x), raw(m, x)) <= 1e-6


def test_netgen_networks():
    """The shared random generator's nets: whatever blocks qualify are removed exactly."""
    seen = 0
    for seed in range(12):
        m = random_model(seed, random_darknet(seed, size=32))
        blocks, _ = analyze_blocks(m.module_defs)
        if blocks:
            r = prune_layers_model(m, len(blocks), img_size=(32, 32))
            check_result(m, r, torch.rand(1, 3, 32, 32))
            seen += len(blocks)
    assert seen >= 5


# ---- the standard cfgs ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", STANDARD)
def test_standard_cfgs(standard_models, name):
    m = standard_models[name]
    blocks, why = analyze_blocks(m.module_defs)
    assert len(blocks) == 23 and not why  # every shortcut of v3, v3-spp, v4 is removable
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    r = prune_layers_model(m, 12, img_size=(64, 64))
    check_result(m, r, x)
    assert r.report["depth"] == {"before": len(conv_layers(m)), "after": len(conv_layers(m)) - 24}
    assert r.report["verification"]["rel_vs_folded"] <= 1e-5
    assert r.report["params"]["after"] < r.report["params"]["before"]
    # zero γ, β of the chosen blocks: lossless against the original
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        for b in r.removed:
            m2.module_list[b.conv2].bn.weight.zero_()
            m2.module_list[b.conv2].bn.bias.zero_()
    r2 = prune_layers_model(m2, 12, check=False)
    assert max_abs(raw(r2.compact, x), raw(m2, x)) <= 1e-6


# ---- files, combined mode, CLI --------------------------------------------------------------------

LAYER_FILES = {"net.pt", "prune_report.json", "layers.png"}


def write_net(tmp_path: Path, seed: int = 1) -> tuple[Path, Path, Darknet]:
    return write_random_net(tmp_path, seed, residual_net(seed), stem="net")


def test_run_writes_exact_darknet_files(tmp_path):
    cfg, wts, m = write_net(tmp_path)
    rep = run(str(cfg), str(wts), str(tmp_path / "out"), 4, img_size=32, **QUIET)
    back = read_output_dir(tmp_path / "out", LAYER_FILES)
    x = torch.rand(1, 3, 32, 32)
    r = prune_layers_model(m, 4, check=False)
    assert max_abs(raw(back, x), raw(r.compact, x)) == 0.0
    saved = json.loads((tmp_path / "out" / "prune_report.json").read_text())
    v = saved["verification"]
    assert v["max_abs_reloaded"] == 0.0 and v["rel_vs_folded"] <= 1e-5
    assert saved["depth"]["after"] == saved["depth"]["before"] - 8 == len(conv_layers(back))
    assert [b["shortcut"] for b in saved["removed_blocks"]] == [b.shortcut for b in r.removed]
    assert saved["flops"]["after"] < saved["flops"]["before"] and rep["files"]["cfg"] == "net.cfg"


@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_combined_equals_sequential(tmp_path, thr):
    """prune_layers --threshold T == prune_layers, then prune_channels --threshold T: the same
    cfg text and the same .weights bytes."""
    cfg, wts, _ = write_net(tmp_path, seed=2)
    n = len(analyze_blocks(parse_cfg(str(cfg)))[0]) - 1
    opts = PruneOptions(strategy="slim", threshold=thr)
    a, b = tmp_path / "a", tmp_path / "b"
    rep = run(str(cfg), str(wts), str(a), n, channel_opts=opts, **QUIET)
    run(str(cfg), str(wts), str(tmp_path / "l"), n, **QUIET)
    run_channels(str(tmp_path / "l" / "net.cfg"), str(tmp_path / "l" / "net.weights"), str(b), opts, **QUIET)
    assert (a / "net.cfg").read_text() == (b / "net.cfg").read_text()
    assert (a / "net.weights").read_bytes() == (b / "net.weights").read_bytes()
    back = read_output_dir(a, LAYER_FILES)
    c = rep["channel_pruning"]
    assert c["threshold"] == thr and c["verification"]["rel_vs_folded"] <= 1e-5
    assert rep["final"]["params"] < rep["params"]["after"] < rep["params"]["before"]
    assert rep["final"]["depth"] == len(conv_layers(back))


def test_combined_layer_ratios_name_input_layers(tmp_path):
    """--layer-ratios with --shortcuts name the input cfg's layers (what sensitivity measured):
    combined == layer pruning, then prune_channels with the ratios renumbered by hand; ratios of
    convs inside removed blocks are dropped."""
    from yolo_slim.analysis.graph import build_graph, prunable_of
    cfg, wts, m = write_net(tmp_path, seed=2)
    n = len(analyze_blocks(parse_cfg(str(cfg)))[0]) - 1
    lres = prune_layers_model(m, n, check=False)
    gone = {j for b in lres.removed for j in b.layers}
    convs = prunable_of(build_graph(m.module_defs), "slim")
    ratios = {i: 0.5 for i in convs}
    assert any(i in gone for i in ratios) and any(i not in gone for i in ratios)
    a, b, lay = tmp_path / "a", tmp_path / "b", tmp_path / "l"
    rep = run(str(cfg), str(wts), str(a), n, channel_opts=PruneOptions(layer_ratios=ratios), **QUIET)
    run(str(cfg), str(wts), str(lay), n, **QUIET)
    moved = {lres.index[i]: r for i, r in ratios.items() if i not in gone}
    run_channels(str(lay / "net.cfg"), str(lay / "net.weights"), str(b),
                 PruneOptions(layer_ratios=moved), **QUIET)
    assert (a / "net.cfg").read_text() == (b / "net.cfg").read_text()
    assert (a / "net.weights").read_bytes() == (b / "net.weights").read_bytes()
    assert rep["final"]["params"] < rep["params"]["after"]
    with pytest.raises(Exception, match="not a layer of the input cfg"):
        run(str(cfg), str(wts), str(tmp_path / "c"), n,
            channel_opts=PruneOptions(layer_ratios={10_000: 0.5}), **QUIET)


def test_cli(tmp_path, run_script):
    import prune_layers
    cfg, wts, _ = write_net(tmp_path)
    base = ["--cfg", str(cfg), "--weights", str(wts)]
    n = len(analyze_blocks(parse_cfg(str(cfg)))[0])
    assert prune_layers.main(base + ["--output-dir", str(tmp_path / "o"), "--shortcuts", str(n + 1)]) == 2
    assert prune_layers.main(base + ["--output-dir", str(tmp_path / "o"), "--shortcuts", "-1"]) == 2
    assert prune_layers.main(base + ["--output-dir", str(tmp_path / "o")]) == 2  # no --shortcuts
    assert prune_layers.main(base + ["--output-dir", str(tmp_path / "o"), "--shortcuts", "1",
                                     "--global-percent", "0.5", "--threshold", "0.1"]) == 2
    assert prune_layers.main(base + ["--output-dir", str(tmp_path / "o"), "--shortcuts", "1",
                                     "--rank", "median"]) == 2
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "other.weights").write_bytes(b"")
    assert prune_layers.main(base + ["--output-dir", str(tmp_path / "o2"), "--shortcuts", "1"]) == 2
    rc, out, err = run_script("prune_layers.py", *base, "--list")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert f"({n} removable of {n})" in lines[0] and len(lines) == 1 + n
    ranked = sorted((float(l.split()[-2]), int(l.split()[-1])) for l in lines[1:])
    assert [r for _, r in ranked] == list(range(1, n + 1))  # rank 1 = smallest mean |γ|
    rc, out, err = run_script("prune_layers.py", *base, "--output-dir", tmp_path / "o3",
                              "--shortcuts", "3", "--rank", "max", "--global-percent", "0.4",
                              "--img-size", "32")
    assert rc == 0, err
    assert "removed 3 blocks" in out and "then channels (slim" in out
    read_output_dir(tmp_path / "o3", LAYER_FILES)
    assert (tmp_path / "o3" / "channels.png").is_file()
