"""darknet .weights and .pt: file layout, bit-exact round trips (in the library and through
export.py) for the five standard cfgs, header versions, and exact size errors."""
from __future__ import annotations

import filecmp
import importlib.util
import json

import numpy as np
import pytest
import torch

from yolo_slim.darknet.cfg import parse_cfg_text
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.nn.model import Darknet, build_model, conv_layers
from yolo_slim.nn.weights import (darknet_weights_bytes, load_darknet_weights, load_model,
                               load_weights, model_from_checkpoint, read_checkpoint,
                               save_checkpoint, save_darknet_weights, weights_float_count)

STANDARD = ["yolov3", "yolov3-tiny", "yolov3-spp", "yolov4", "yolov4-tiny"]
SEEN = 123456789012  # needs the int64 field


def header(major: int, minor: int, rev: int, seen: int) -> bytes:
    wide = major * 10 + minor >= 2
    return (np.array([major, minor, rev], "<i4").tobytes()
            + np.array([seen], "<i8" if wide else "<i4").tobytes())


def random_weights(path, n: int, seed: int = 0, hdr: bytes | None = None) -> bytes:
    """A .weights file of n random floats. The floats tile a random block of a prime length
    (cheap for 64 M floats, and no two consecutive tensors line up the same way)."""
    block = np.random.default_rng(seed).standard_normal(1_000_003, dtype=np.float32)
    body = np.resize(block, n).astype("<f4")
    data = (hdr if hdr is not None else header(0, 2, 5, SEEN)) + body.tobytes()
    path.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def export_main(repo_root):
    """export.py's main(argv), imported from the script so the CLI path runs in-process."""
    spec = importlib.util.spec_from_file_location("export_script", repo_root / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def index_floats(corpus_index, rel):
    return next(e["weights_floats"] for e in corpus_index if e["path"] == rel)


@pytest.mark.parametrize("name", STANDARD + ["demo"])
def test_library_round_trip_bit_exact(name, repo_root, tmp_path, corpus_index):
    """.weights -> model -> .weights and model -> .pt -> model -> .weights, byte for byte."""
    model = build_model(str(repo_root / "cfg" / f"{name}.cfg"))
    n = weights_float_count(model)
    if name != "demo":
        assert n == index_floats(corpus_index, f"AlexeyAB/{name}.cfg")
    src = tmp_path / "src.weights"
    data = random_weights(src, n, seed=len(name))
    assert len(data) == 20 + 4 * n
    load_darknet_weights(model, str(src))
    src.unlink()
    assert model.header == (0, 2, 5) and model.seen == SEEN
    assert darknet_weights_bytes(model) == data
    # file order: the first conv's BN beta comes first, its kernel after the four BN vectors
    first = model.module_list[0]
    f = first.conv.out_channels
    floats = np.frombuffer(data, "<f4", offset=20)
    assert np.array_equal(first.bn.bias.detach().numpy(), floats[:f])
    assert np.array_equal(first.conv.weight.detach().numpy().ravel(),
                          floats[4 * f:4 * f + first.conv.weight.numel()])
    pt = tmp_path / "m.pt"
    save_checkpoint(model, str(pt))
    del model
    again = model_from_checkpoint(str(pt))  # weights_only load; no cfg given: the .pt has it
    pt.unlink()
    assert again.header == (0, 2, 5) and again.seen == SEEN
    assert darknet_weights_bytes(again) == data


SMALL = ["yolov3-tiny", "yolov4-tiny", "demo"]
# the big three take ~10 s each through export.py on a busy 2-core box: opt-in (--runslow);
# the library test above covers their bytes with the same functions export.py calls
EXPORT_CASES = SMALL + [pytest.param(n, marks=pytest.mark.slow) for n in
                        ("yolov3", "yolov3-spp", "yolov4")]


@pytest.mark.parametrize("name", EXPORT_CASES)
def test_export_round_trip_bit_exact(name, repo_root, tmp_path, export_main):
    """export.py: .weights -> .weights and .weights -> .pt -> .weights give identical files."""
    cfg = str(repo_root / "cfg" / f"{name}.cfg")
    src = tmp_path / "src.weights"
    random_weights(src, weights_float_count(build_model(cfg)), seed=len(name) + 1)
    out1, pt, out2 = tmp_path / "a.weights", tmp_path / "m.pt", tmp_path / "b.weights"
    assert export_main(["--cfg", cfg, "--weights", str(src), "--format", "weights",
                        "--output", str(out1)]) == 0
    assert filecmp.cmp(src, out1, shallow=False)
    out1.unlink()
    assert export_main(["--cfg", cfg, "--weights", str(src), "--format", "pt",
                        "--output", str(pt)]) == 0
    assert export_main(["--weights", str(pt), "--format", "weights", "--output", str(out2)]) == 0
    assert filecmp.cmp(src, out2, shallow=False)
    for p in (src, pt, out2):
        p.unlink()


def test_export_script_subprocess_round_trip(repo_root, tmp_path, run_script, export_main):
    """export.py run as a script (one subprocess: a torch import costs seconds here)."""
    cfg = str(repo_root / "cfg" / "yolov4-tiny.cfg")
    n = weights_float_count(build_model(cfg))
    src = tmp_path / "t.weights"
    random_weights(src, n, seed=7)
    rc, out, err = run_script("export.py", "--cfg", cfg, "--weights", src, "--format", "pt",
                              "--output", tmp_path / "t.pt")
    assert rc == 0, err
    assert out.strip() == f"wrote {tmp_path / 't.pt'}" and err == ""
    assert export_main(["--weights", str(tmp_path / "t.pt"), "--format", "weights",
                        "--output", str(tmp_path / "back.weights")]) == 0
    assert filecmp.cmp(src, tmp_path / "back.weights", shallow=False)


LAYOUT = """[net]
channels=2
[convolutional]
batch_normalize=1
filters=3
size=3
pad=1
activation=leaky
[convolutional]
filters=4
size=1
groups=1
activation=linear
[convolutional]
filters=4
size=3
groups=2
pad=1
activation=leaky
batch_normalize=1
[convolutional]
filters=6
size=1
activation=linear
[yolo]
mask=0
anchors=2,2
classes=1
"""


def test_layout_by_hand(tmp_path):
    model = Darknet(parse_cfg_text(LAYOUT))
    # BN conv: 4*3 + 3*2*9; plain conv: 4 + 4*3; grouped BN conv: 4*4 + 4*(4/2)*9; head 6 + 6*4
    sizes = [12 + 54, 4 + 12, 16 + 72, 6 + 24]
    assert sum(sizes) == 200
    assert weights_float_count(model) == sum(sizes)
    path = tmp_path / "l.weights"
    path.write_bytes(header(0, 2, 5, 0) + np.arange(sum(sizes), dtype="<f4").tobytes())
    load_darknet_weights(model, str(path))
    (_, c0), (_, c1), (_, c2), (_, c3) = conv_layers(model)
    ar = torch.arange(sum(sizes), dtype=torch.float32)
    assert torch.equal(c0.bn.bias, ar[0:3]) and torch.equal(c0.bn.weight, ar[3:6])
    assert torch.equal(c0.bn.running_mean, ar[6:9]) and torch.equal(c0.bn.running_var, ar[9:12])
    assert torch.equal(c0.conv.weight.flatten(), ar[12:66])  # [out][in][ky][kx]
    assert c0.conv.weight[1, 0, 2, 1].item() == 12 + 1 * 18 + 0 * 9 + 2 * 3 + 1
    assert torch.equal(c1.conv.bias, ar[66:70]) and torch.equal(c1.conv.weight.flatten(),
                                                                ar[70:82])
    assert torch.equal(c2.bn.bias, ar[82:86]) and c2.conv.weight.shape == (4, 2, 3, 3)
    assert torch.equal(c3.conv.weight.flatten(), ar[-24:])


def test_old_16_byte_header_round_trip(tmp_path):
    model = Darknet(parse_cfg_text(LAYOUT))
    n = weights_float_count(model)
    src = tmp_path / "old.weights"
    data = random_weights(src, n, seed=3, hdr=header(0, 1, 0, 32013312))
    assert len(data) == 16 + 4 * n
    load_darknet_weights(model, str(src))
    assert model.header == (0, 1, 0) and model.seen == 32013312
    assert darknet_weights_bytes(model) == data
    save_checkpoint(model, str(tmp_path / "old.pt"))
    again = model_from_checkpoint(str(tmp_path / "old.pt"))
    assert darknet_weights_bytes(again) == data


@pytest.mark.parametrize("delta_bytes, pattern", [
    (-7 * 4, r"holds 193 floats but the cfg needs 200 \(7 floats too few\)"),
    (3 * 4, r"holds 203 floats but the cfg needs 200 \(3 floats too many\)"),
    (-200 * 4, r"holds 0 floats but the cfg needs 200 \(200 floats too few\)"),
    (2, r"holds 200\.50 floats \(not a whole number\) but the cfg needs 200 \(\+0\.50 floats\)"),
])
def test_wrong_size_states_the_float_difference(tmp_path, delta_bytes, pattern):
    model = Darknet(parse_cfg_text(LAYOUT))
    assert weights_float_count(model) == 200
    good = header(0, 2, 5, 0) + np.ones(200, "<f4").tobytes()
    bad = good[:len(good) + delta_bytes] if delta_bytes < 0 else good + b"\0" * delta_bytes
    path = tmp_path / "bad.weights"
    path.write_bytes(bad)
    with pytest.raises(YoloSlimError, match=pattern):
        load_darknet_weights(model, str(path))


def test_short_headers_and_missing_file(tmp_path):
    model = Darknet(parse_cfg_text(LAYOUT))
    path = tmp_path / "h.weights"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(YoloSlimError, match="10 bytes is too short"):
        load_darknet_weights(model, str(path))
    path.write_bytes(np.array([0, 2, 5], "<i4").tobytes() + b"\0" * 4)  # seen cut in half
    with pytest.raises(YoloSlimError, match=r"16 bytes is too short for a version 0\.2"):
        load_darknet_weights(model, str(path))
    with pytest.raises(YoloSlimError, match="weights not found"):
        load_darknet_weights(model, str(tmp_path / "missing.weights"))


def test_checkpoint_rebuilds_model_without_cfg(tmp_path):
    torch.manual_seed(0)
    model = Darknet(parse_cfg_text(LAYOUT))
    with torch.no_grad():
        for _, m in conv_layers(model):
            if m.bn is not None:
                m.bn.running_mean.normal_()
                m.bn.running_var.uniform_(0.5, 2)
    model.seen = 77
    pt = tmp_path / "m.pt"
    save_checkpoint(model, str(pt), epoch=3, note="x")
    ckpt = torch.load(pt, map_location="cpu", weights_only=True)  # plain tensors and strings
    assert set(ckpt) == {"cfg", "model", "header", "seen", "epoch", "note"}
    assert read_checkpoint(str(pt))["epoch"] == 3
    again = model_from_checkpoint(str(pt))
    assert again.seen == 77 and again.header == (0, 2, 5)
    x = torch.rand(2, 2, 16, 16)
    model.eval(), again.eval()
    with torch.no_grad():
        assert (model(x) - again(x)).abs().max().item() == 0.0
    # the same .pt also loads into a model built from the user's cfg, and via load_model
    other = Darknet(parse_cfg_text(LAYOUT))
    load_weights(other, str(pt))
    assert darknet_weights_bytes(other) == darknet_weights_bytes(model)
    assert darknet_weights_bytes(load_model(None, str(pt))) == darknet_weights_bytes(model)


def test_checkpoint_errors(tmp_path):
    model = Darknet(parse_cfg_text(LAYOUT))
    pt = tmp_path / "m.pt"
    save_checkpoint(model, str(pt))
    wrong = Darknet(parse_cfg_text(LAYOUT.replace("filters=3\n", "filters=5\n", 1)))
    with pytest.raises(YoloSlimError, match="does not match the cfg"):
        load_weights(wrong, str(pt))
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(YoloSlimError, match="not a readable checkpoint"):
        read_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"model": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(YoloSlimError, match="has no cfg"):
        model_from_checkpoint(str(tmp_path / "nocfg.pt"))
    with pytest.raises(YoloSlimError, match="--cfg is required"):
        load_model(None, str(tmp_path / "x.weights"))
    save_darknet_weights(model, str(tmp_path / "ok.weights"))
    assert (tmp_path / "ok.weights").stat().st_size == 20 + 4 * 200
    assert json.dumps(read_checkpoint(str(pt))["header"]) == "[0, 2, 5]"


# ---- --transfer: weights made for another cfg ----------------------------------------------------

def _demo_pair(tmp_path, classes: int):
    """demo.cfg with `classes` classes (heads: 3 x (5 + classes) filters) and a random model."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "cfg" / "demo.cfg").read_text()
    text = text.replace("filters=30", f"filters={3 * (5 + classes)}").replace(
        "classes=5", f"classes={classes}")
    path = tmp_path / f"demo{classes}.cfg"
    path.write_text(text)
    return str(path), build_model(str(path))


def prefix_floats(convs, k: int) -> int:
    """Floats the first k conv layers take in a .weights file."""
    from yolo_slim.nn.weights import _layer_tensors
    return sum(t.numel() for _, m in convs[:k] for t in _layer_tensors(m))


def _layer_state(m, i):
    return {k: v.clone() for k, v in m.module_list[i].state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_transfer_other_class_count(tmp_path):
    """COCO-style weights of a 5-class model onto a 2-class cfg: every conv but the heads is
    copied exactly, the heads keep their initialisation; the same from a .pt."""
    from yolo_slim.nn.weights import load_transfer, save_checkpoint
    src_cfg, src = _demo_pair(tmp_path, 5)
    torch.manual_seed(1)
    for p in src.parameters():
        p.data.normal_()
    for b in src.buffers():
        if b.dtype.is_floating_point:
            b.data.uniform_(0.5, 2)
    wts = tmp_path / "src.weights"
    wts.write_bytes(darknet_weights_bytes(src))
    save_checkpoint(src, str(tmp_path / "src.pt"))
    heads = [i for i, m in conv_layers(src) if m.conv.out_channels == 30]
    assert len(heads) == 2
    for path, scfg in ((str(wts), src_cfg), (str(tmp_path / "src.pt"), None)):
        _, dst = _demo_pair(tmp_path, 2)
        init = {i: _layer_state(dst, i) for i in heads}
        rep = load_transfer(dst, path, scfg)
        assert rep["mode"] == "match" and rep["kept_init"] == heads
        assert len(rep["loaded"]) == len(conv_layers(dst)) - 2
        for i in rep["loaded"]:
            assert _same(_layer_state(dst, i), _layer_state(src, i))
        for i in heads:
            assert _same(_layer_state(dst, i), init[i])


def test_transfer_prefix_like_darknet53_conv(tmp_path):
    """A .weights holding the first k conv layers (darknet53.conv.74 style) loads them exactly;
    a file ending inside a layer, or longer than the cfg, is a clear error."""
    from yolo_slim.nn.weights import load_transfer
    _, src = _demo_pair(tmp_path, 5)
    torch.manual_seed(2)
    for p in src.parameters():
        p.data.normal_()
    full = darknet_weights_bytes(src)
    convs = conv_layers(src)
    k = 5
    n_floats = prefix_floats(convs, k)
    cut = tmp_path / "demo.conv.k"
    cut.write_bytes(full[:20 + 4 * n_floats])
    _, dst = _demo_pair(tmp_path, 5)
    rest = {i: _layer_state(dst, i) for i, _ in convs[k:]}
    rep = load_transfer(dst, str(cut))
    assert rep["mode"] == "prefix" and rep["loaded"] == [i for i, _ in convs[:k]]
    for i, _ in convs[:k]:
        assert _same(_layer_state(dst, i), _layer_state(src, i))
    for i, st in rest.items():
        assert _same(_layer_state(dst, i), st)
    (tmp_path / "mid").write_bytes(full[:20 + 4 * (n_floats + 7)])
    with pytest.raises(YoloSlimError, match=f"ends inside conv layer {convs[k][0]}"):
        load_transfer(dst, str(tmp_path / "mid"))
    (tmp_path / "long").write_bytes(full + b"\0" * 8)
    with pytest.raises(YoloSlimError, match="2 floats left"):
        load_transfer(dst, str(tmp_path / "long"))


def test_transfer_cli(tmp_path, run_script, shapes_data):
    """train_sparse.py --transfer: one epoch from a 3-layer prefix file; flag misuse exits 2
    with one line."""
    src_cfg, src = _demo_pair(tmp_path, 5)
    convs = conv_layers(src)
    n = prefix_floats(convs, 3)
    wts = tmp_path / "prefix.weights"
    wts.write_bytes(darknet_weights_bytes(src)[:20 + 4 * n])
    rc, out, err = run_script("train_sparse.py", "--cfg", src_cfg, "--data", shapes_data,
                              "--weights", wts, "--transfer", "--epochs", "1", "--img-size", "64",
                              "--batch-size", "4", "--workers", "0", "--no-progress",
                              "--output-dir", tmp_path / "run")
    assert rc == 0, err
    assert f"--transfer (prefix): 3 conv layers loaded from {wts}, {len(convs) - 3} keep" in out
    assert (tmp_path / "run" / "last.pt").is_file()
    rc, _, err = run_script("train_sparse.py", "--cfg", src_cfg, "--data", shapes_data,
                            "--weights", wts, "--weights-cfg", src_cfg)
    assert rc == 2 and "--weights-cfg is for --transfer" in err and "Traceback" not in err
    rc, _, err = run_script("train_sparse.py", "--cfg", src_cfg, "--data", shapes_data, "--transfer")
    assert rc == 2 and "--transfer needs" in err and "Traceback" not in err
