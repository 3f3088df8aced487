"""ncnn export (deploy/ncnn_writer.py, deploy/ncnn_backend.py): every section type the writer
covers, run in ncnn against PyTorch's forward_raw and, for the real tiny cfgs, the decoded
detections against the independent numpy darknet forward (tests/darknet_ref.py); the exact
text of a one-conv .param and its .bin; the check that refuses a wrong weight and leaves no
file; the one-conv nets of the latency table; one-line errors for missing or garbled files."""
from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("ncnn")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import darknet_ref  # noqa: E402
from cfgs import conv_section, head_sections, maxpool_section, net_section, route_section  # noqa: E402
from netgen import random_model  # noqa: E402

from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.deploy import ncnn_backend, ncnn_writer  # noqa: E402
from yolo_slim.deploy.backends import backend, backend_for_file, shipped_files  # noqa: E402
from yolo_slim.deploy.export import ExportOptions  # noqa: E402
from yolo_slim.nn.weights import save_darknet_weights  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet-cfg"


def _sec(kind: str, **keys) -> str:
    return f"[{kind}]\n" + "".join(f"{k}={v}\n" for k, v in keys.items())


# maxpool 2/1 (darknet pads 0 before, 1 after) and 2/2 on an odd map, route groups (yolov4-tiny's
# CSP slice), relu/tanh convs, a grouped conv, a shortcut with leaky, upsample with scale, two heads
CORE = "".join([
    net_section(48), conv_section(8, 3, 2, act="linear"), maxpool_section(2, 1),
    conv_section(16, 3, 1, act="relu"), maxpool_section(2, 2),
    _sec("route", layers=-1, groups=2, group_id=1), conv_section(8, 3, 1, act="tanh"),
    _sec("convolutional", batch_normalize=1, filters=8, size=3, pad=1, groups=4, activation="leaky"),
    _sec("shortcut", **{"from": -2}, activation="leaky"), route_section(-1, -5),
    head_sections(2, [(4, 6), (8, 10)]),
    route_section(-5), _sec("upsample", stride=2, scale=0.5), route_section(-1, -11),
    conv_section(8, 1, 1, act="mish"), head_sections(2, [(12, 14)])])

# attention and odd joins: [sam], [avgpool] + [scale_channels] (squeeze-excitation), [reorg3d],
# [dropout], swish/logistic, a narrower and a wider [shortcut] source (darknet's prefix add)
ATTENTION = "".join([
    net_section(32), conv_section(8, 3, 1, act="swish"), conv_section(8, 1, 1, act="logistic"),
    _sec("sam", **{"from": -2}), _sec("avgpool"), conv_section(8, 1, 1, bn=False, act="logistic"),
    _sec("scale_channels", **{"from": -3}, activation="linear"), _sec("dropout", probability=0.3),
    _sec("reorg3d", stride=2), conv_section(4, 1, 1, act="leaky"), conv_section(12, 3, 1, act="mish"),
    _sec("shortcut", **{"from": "-2,-3"}, activation="swish"),
    conv_section(16, 1, 1, act="leaky"), _sec("shortcut", **{"from": -2}, activation="linear"),
    head_sections(3, [(5, 5), (9, 9)])])


def _export(tmp_path, model, hw, **kw) -> tuple[dict, str]:
    out = str(tmp_path / "m.param")
    return ncnn_backend.export(model, out, ExportOptions(img_size=hw, **kw)), out


def _raw_maps(model, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [p.permute(0, 1, 4, 2, 3).flatten(1, 2).numpy() for p in model.eval().forward_raw(x)]


@pytest.mark.parametrize("text, hw, layers", [
    (CORE, (48, 48), {"Pooling", "Crop", "ConvolutionDepthWise", "Eltwise", "Interp", "BinaryOp",
                      "Concat", "Split", "TanH", "ReLU"}),
    (ATTENTION, (32, 32), {"Swish", "BinaryOp", "Reshape", "Reorg", "Crop", "Concat", "Eltwise"}),
    (None, (64, 64), {"Convolution"}),  # a random netgen detector (SPP, CSP, residual stages)
], ids=["core", "attention", "random"])
def test_sections_match_torch(tmp_path, text, hw, layers):
    model = random_model(3, text)
    report, out = _export(tmp_path, model, hw)
    assert report["max_abs_delta"] < 5e-6 and report["outputs"] == [f"raw{k}" for k in
                                                                     range(len(model.heads))]
    kinds = {line.split()[0] for line in Path(out).read_text().splitlines()[2:]}
    assert layers <= kinds
    r = ncnn_backend.load(out, threads=1)
    x = torch.rand(3, 3, *hw, generator=torch.Generator().manual_seed(5))
    got, ref = r(x.numpy()), _raw_maps(model, x)
    assert [g.shape for g in got] == [q.shape for q in ref] and got[0].shape[0] == 3
    assert max(float(np.abs(g - q).max()) for g, q in zip(got, ref)) < 5e-6
    assert r.input_shape == (None, 3, *hw) and r.output_names == report["outputs"]
    with torch.no_grad():
        assert float((r.decode(got) - model.eval()(x)).abs().max()) < 1e-4  # boxes in pixels


def test_maxpool_padding_is_darknets(tmp_path):
    """Stride-1 size-2 writes pads (0 before, 1 after) with pad_mode=1; a 2/2 pool of an even
    map keeps darknet's size (ncnn's default mode would add a column)."""
    model = random_model(0, CORE)
    _, out = _export(tmp_path, model, (48, 48))
    pools = [ln.split()[6:] for ln in Path(out).read_text().splitlines() if ln.startswith("Pooling")]
    assert pools == [["0=0", "1=2", "2=1", "3=0", "5=1", "12=1", "13=0", "14=1", "15=1"],
                     ["0=0", "1=2", "2=2", "3=0", "5=1", "12=2", "13=0", "14=1", "15=1"]]


@pytest.mark.parametrize("name, hw", [("yolov3-tiny", (64, 64)), ("yolov4-tiny", (64, 96))])
def test_real_cfg_matches_darknet_reference(tmp_path, name, hw):
    cfg = CORPUS / "AlexeyAB" / f"{name}.cfg"
    if not cfg.is_file():
        pytest.skip("corpus not found")
    model = random_model(1, cfg.read_text())
    wts = tmp_path / "m.weights"
    save_darknet_weights(model, str(wts))
    report, out = _export(tmp_path, model, hw)
    assert report["max_rel_delta"] < 5e-6
    x = np.random.default_rng(2).random((2, 3, *hw), dtype=np.float32)
    r = backend_for_file(out).load(out)
    det = r.decode(r(x)).numpy()
    ref = darknet_ref.forward(cfg.read_text(), darknet_ref.read_weights(str(wts)), x)
    assert det.shape == ref.shape == (2, sum(3 * (hw[0] // s) * (hw[1] // s) for s in (32, 16)), 85)
    assert float((np.abs(det - ref) / np.maximum(1, np.abs(ref))).max()) < 1e-4


ONE_CONV = net_section(32) + head_sections(1, [(4, 4)], pad=None)  # 3 -> 6 channels, 1x1


def test_one_conv_param_bytes(tmp_path):
    model = random_model(0, ONE_CONV)
    report, out = _export(tmp_path, model, (32, 32))
    assert Path(out).read_text() == (
        "7767517\n2 2\n"
        "Input images 0 1 images 0=32 1=32 2=3\n"
        "Convolution l0 1 1 images raw0 0=6 1=1 2=1 3=1 4=0 5=1 6=18\n")
    data = (tmp_path / "m.bin").read_bytes()
    conv = model.module_list[0].conv
    assert data == struct.pack("<I", 0) + conv.weight.detach().numpy().astype("<f4").tobytes() \
        + conv.bias.detach().numpy().astype("<f4").tobytes()
    assert sorted(os.listdir(tmp_path)) == ["m.bin", "m.param", "m.param.json"]
    assert report["files"] == shipped_files(out) == [out, str(tmp_path / "m.bin"), out + ".json"]
    assert ncnn_writer.param_items({10: [0.1], 2: 1.0, 0: 3}) == \
        "0=3 2=1.00000000e+00 -23310=1,1.00000000e-01"


def test_export_refuses_a_wrong_weight(tmp_path, monkeypatch):
    real = ncnn_writer.conv_arrays

    def off_by_one(m):  # one kernel weight of the head conv written wrong by 0.05
        w, b = real(m)
        if w.shape[0] == 6:
            w = w.copy()
            w[3, 1, 0, 0] += 0.05
        return w, b

    monkeypatch.setattr(ncnn_writer, "conv_arrays", off_by_one)
    with pytest.raises(YoloSlimError, match=r"^ncnn differs from torch: max \|delta\| = 0\.0\d+ "
                                            r".*> tol 0\.001\)$"):
        _export(tmp_path, random_model(0, ONE_CONV), (32, 32))
    assert os.listdir(tmp_path) == []


def test_export_refusals(tmp_path):
    m = random_model(0, ONE_CONV)
    with pytest.raises(YoloSlimError, match="ends in .param"):
        ncnn_backend.export(m, str(tmp_path / "m.onnx"), ExportOptions(img_size=32))
    with pytest.raises(YoloSlimError, match="--nms"):
        ncnn_backend.export(m, str(tmp_path / "m.param"), ExportOptions(img_size=32, nms=True))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("spec", [
    dict(size=3, groups=1, stride_y=2, stride_x=2, padding=1, dilation=1, act="leaky"),
    dict(size=3, groups=4, stride_y=1, stride_x=2, padding=1, dilation=2, act="swish"),
    dict(size=1, groups=1, stride_y=1, stride_x=1, padding=0, dilation=1, act="mish")])
def test_conv_runner(spec):
    spec = {**spec, "in_hw": [13, 16], "batch": 2}
    r = backend("ncnn").conv_runner(spec, 8, 12, threads=1)
    x = np.random.default_rng(0).random((2, 8, 13, 16), dtype=np.float32)
    (y,) = r(x)
    k, g, d = spec["size"], spec["groups"], spec["dilation"]
    w = torch.from_numpy((np.random.default_rng(0).standard_normal((12, 8 // g, k, k)) * 0.01)
                         .astype(np.float32))  # conv_runner's weights: the same seeded draw
    act = {"leaky": lambda t: F.leaky_relu(t, 0.1), "swish": F.silu, "mish": F.mish}[spec["act"]]
    ref = act(F.conv2d(torch.from_numpy(x), w, None, (spec["stride_y"], spec["stride_x"]),
                       spec["padding"] * d, d, g)).numpy()
    assert y.shape == ref.shape and r.input_shape == (2, 8, 13, 16)
    assert float(np.abs(y - ref).max()) < 1e-6


def test_load_errors_are_one_line(tmp_path):
    p = tmp_path / "m.param"
    with pytest.raises(YoloSlimError, match=r"^ncnn param not found: .*m\.param$"):
        ncnn_backend.load(str(p))
    _export(tmp_path, random_model(0, ONE_CONV), (32, 32))
    good = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(good[:40])
    with pytest.raises(YoloSlimError) as e:
        ncnn_backend.load(str(p))
    assert "\n" not in str(e.value) and "ncnn cannot load m.bin" in str(e.value)
    (tmp_path / "m.bin").write_bytes(good)
    p.write_text("not an ncnn param\n")
    with pytest.raises(YoloSlimError) as e:
        ncnn_backend.load(str(p))
    assert "\n" not in str(e.value) and "ncnn cannot load m.param" in str(e.value)
    (tmp_path / "m.bin").unlink()
    with pytest.raises(YoloSlimError, match=r"^ncnn weights \(.bin beside the .param\) not found"):
        ncnn_backend.load(str(p))


def test_unwritable_layer_is_named():
    model = random_model(0, ONE_CONV)
    model.module_list[0] = torch.nn.Identity()  # a module type the writer has no entry for
    with pytest.raises(YoloSlimError, match=r"^\[convolutional\] \(layer 0\) has no ncnn writer"):
        ncnn_writer.write_model(model, (32, 32))


def test_evaluate_scores_the_param_file_as_torch(tmp_path):
    """evaluate's file path (deploy/onnx_eval.py) on a .param: the mAP the torch model gets on
    the same set, and agreement 1.0 with the torch model's own detections."""
    from yolo_slim.data.synthetic import make_shapes_dataset
    from yolo_slim.deploy.onnx_eval import evaluate_onnx
    from yolo_slim.eval.evaluate import evaluate
    from yolo_slim.data.dataset import create_dataloader, parse_data_file
    data = make_shapes_dataset(str(tmp_path / "shapes"), 1, 6, 64, seed=0)
    model = random_model(0, net_section(64) + conv_section(8, 3, 2) + conv_section(16, 3, 2)
                         + head_sections(5, [(10, 10), (20, 20), (40, 40)]))
    _, out = _export(tmp_path, model, (64, 64))
    got = evaluate_onnx(out, data, batch_size=4, workers=0, progress=False)
    loader, _ = create_dataloader(parse_data_file(data).valid, 64, 4, augment=False, rect=False,
                                  workers=0, shuffle=False, nc=5, verbose=False)
    ref = evaluate(model, loader, 0.001, 0.6, "cpu", progress=False, nc=5)
    assert got["n_images"] == 6 and got["map50"] > 0  # untrained, yet not all-zero: a real equality
    assert (got["map"], got["map50"]) == (ref["map"], ref["map50"])
    agree = evaluate_onnx(out, data, batch_size=4, workers=0, progress=False, reference=model,
                          reference_conf=0.05)
    assert agree["scored_against"] == "reference" and agree["n_labels"] > 1000
    assert agree["map"] > 0.99 and agree["map50"] > 0.99
