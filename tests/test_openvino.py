"""OpenVINO runtime (deploy/openvino_backend.py, deploy/openvino_int8.py): the IR export is checked
in OpenVINO against PyTorch and refuses a wrong weight; FP32 weights and f32 inference (not the
bf16 an AMX CPU picks by default); dynamic batch; evaluate on the .xml scores what torch scores;
INT8 by NNCF keeps the decode tail in float, with the parity report and its refusal."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

pytest.importorskip("openvino", reason="OpenVINO runtime not installed (pip install openvino)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import random_model, randomize_bn  # noqa: E402

from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.deploy import openvino_backend as ovb  # noqa: E402
from yolo_slim.nn.model import Darknet, conv_layers  # noqa: E402
from yolo_slim.nn.weights import save_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "cfg" / "yolov3-tiny.cfg"  # -inf maxpool padding, upsample, route, two heads


@pytest.fixture(scope="module")
def tiny_model() -> Darknet:
    return random_model(7, TINY.read_text(), str(TINY))


def rel_delta(ref: torch.Tensor, got: np.ndarray) -> float:
    r = ref.numpy().astype(np.float64)
    return float((np.abs(got - r) / np.maximum(1.0, np.abs(r))).max())


def test_export_matches_torch_with_fp32_weights_and_dynamic_batch(tiny_model, tmp_path):
    out = tmp_path / "t.xml"
    r = ovb.export(tiny_model, str(out), img_size=64)
    assert r["max_rel_delta"] < 1e-5 and r["onnx_check"]["max_rel_delta"] < 1e-5
    assert r["precision"] == "f32" and r["outputs"] == ["detections"] and r["check_batch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["t.bin", "t.xml"]  # no temp left behind
    # FP32 weights: the .bin holds at least 4 bytes per folded weight (fp16 would be 2)
    folded = sum(c.conv.weight.numel() + c.conv.out_channels for _, c in conv_layers(tiny_model))
    assert (tmp_path / "t.bin").stat().st_size >= 4 * folded
    runner = ovb.load(str(out), threads=1)
    assert runner.input_shape == (None, 3, 64, 64) and runner.precision == "f32"
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # not the check's 2
    with torch.no_grad():
        ref = tiny_model(x)
    got = runner(x.numpy())[0]
    assert got.shape == (3, 3 * (2 * 2 + 4 * 4), 85) and rel_delta(ref, got) < 1e-5


def test_raw_export_and_the_refusals(tiny_model, tmp_path):
    r = ovb.export(tiny_model, str(tmp_path / "raw.xml"), img_size=64, raw=True)
    assert r["outputs"] == ["raw0", "raw1"] and r["max_rel_delta"] < 1e-5
    runner = ovb.load(str(tmp_path / "raw.xml"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = tiny_model.forward_raw(x)
    got = runner(x.numpy())
    assert [g.shape for g in got] == [tuple(p.shape) for p in ref]
    assert max(rel_delta(p, g) for p, g in zip(ref, got)) < 1e-5
    with pytest.raises(YoloSlimError, match="--nms"):
        ovb.export(tiny_model, str(tmp_path / "n.xml"), img_size=64, nms=True)
    with pytest.raises(YoloSlimError, match=r"\.xml"):
        ovb.export(tiny_model, str(tmp_path / "n.onnx"), img_size=64)
    (tmp_path / "lonely.xml").write_text("<net/>")
    with pytest.raises(YoloSlimError, match=r"lonely\.bin"):
        ovb.load(str(tmp_path / "lonely.xml"))


def test_export_refuses_a_wrong_weight(tiny_model, tmp_path, monkeypatch):
    """The conversion gets one wrong number (a head conv's bias + 1: the x logit of one anchor):
    the check in OpenVINO refuses the IR and nothing is written."""
    convert = ovb.convert

    def corrupt(onnx_path):
        m = onnx.load(onnx_path)
        head = [n for n in m.graph.node if n.op_type == "Conv"][-1]
        bias = next(t for t in m.graph.initializer if t.name == head.input[2])
        b = numpy_helper.to_array(bias).copy()
        b[0] += 1.0
        bias.CopyFrom(numpy_helper.from_array(b, bias.name))
        onnx.save(m, onnx_path)
        return convert(onnx_path)
    monkeypatch.setattr(ovb, "convert", corrupt)
    with pytest.raises(YoloSlimError, match=r"OpenVINO differs from torch: .*> tol 0\.001"):
        ovb.export(tiny_model, str(tmp_path / "bad.xml"), img_size=64)
    assert os.listdir(tmp_path) == []


def test_compiled_in_f32_with_the_threads_asked():
    cfg = ovb.compile_config(3)
    assert cfg == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                   "INFERENCE_NUM_THREADS": 3}
    spec = {"size": 3, "stride_y": 2, "stride_x": 2, "padding": 1, "groups": 1, "dilation": 1,
            "in_hw": [16, 16], "act": "leaky", "batch": 2}
    r = ovb.conv_runner(spec, 8, 16, threads=1)
    y = r(np.random.default_rng(0).random((2, 8, 16, 16), dtype=np.float32))[0]
    assert y.shape == (2, 16, 8, 8) and r.precision == "f32"
    assert r.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_evaluate_on_the_ir_equals_the_torch_map(tmp_path, run_script, shapes_data):
    """evaluate.py --model-file x.xml (OpenVINO) and --weights (torch): the same letterbox, NMS
    and mAP, only the forward differs; a --raw IR decoded by --cfg gives the same too."""
    from yolo_slim.deploy.onnx_eval import evaluate_onnx
    cfg = str(REPO / "cfg" / "demo.cfg")  # 5 classes, like the set
    torch.manual_seed(1)
    model = Darknet(parse_cfg(cfg))
    randomize_bn(model, 1)
    pt, xml, raw = (str(tmp_path / n) for n in ("m.pt", "m.xml", "raw.xml"))
    save_checkpoint(model.eval(), pt)
    ovb.export(model, xml, img_size=64)
    ovb.export(model, raw, img_size=64, raw=True)
    common = ["--data", shapes_data, "--batch-size", "3", "--workers", "0"]
    m = {}
    for k, args in {"torch": ["--weights", pt, "--img-size", "64", "--device", "cpu"],
                    "openvino": ["--model-file", xml]}.items():
        rc, so, se = run_script("evaluate.py", *args, *common, "--output-dir", tmp_path / k)
        assert rc == 0, se
        m[k] = json.loads((tmp_path / k / "metrics.json").read_text())
    assert "run in openvino, f32" in so and m["openvino"]["inference_precision"] == "f32"
    m["raw"] = evaluate_onnx(raw, shapes_data, batch_size=3, workers=0, progress=False, cfg=cfg)
    ref = m["torch"]
    assert sum(c["n_dets"] for c in ref["per_class"]) > 1000 and ref["map50"] > 0
    for k in ("openvino", "raw"):
        for key in ("map50", "map", "precision", "recall"):
            assert m[k][key] == pytest.approx(ref[key], rel=1e-6, abs=3e-5), (k, key)
        assert [c["n_dets"] for c in m[k]["per_class"]] == [c["n_dets"] for c in ref["per_class"]]


@pytest.fixture(scope="module")
def int8_run(tiny_model, shapes_data, tmp_path_factory, run_script):
    """export.py --format openvino --int8 on the tiny model: (folder, stdout, report)."""
    d = tmp_path_factory.mktemp("ovint8")
    save_checkpoint(tiny_model, str(d / "t.pt"))
    rc, so, se = run_script("export.py", "--weights", d / "t.pt", "--format", "openvino",
                               "--img-size", "64", "--int8", "--calib-data", shapes_data,
                               "--calib-images", "8")
    assert rc == 0, se
    return d, so, json.loads((d / "t.int8.xml.quant.json").read_text())


def test_int8_keeps_the_decode_tail_float_and_reports_parity(int8_run):
    import openvino as ov
    d, so, r = int8_run
    assert (d / "t.int8.xml").is_file() and (d / "t.int8.bin").is_file()
    assert "openvino check (FP32 before quantization)" in so and "FP32 detections found again" in so
    p = r["parity"]
    # measured on this set: 100% of 300+ found again, mean IoU 0.98, score |delta| < 0.003
    assert p["ref_detections"] > 100 and p["match_rate"] >= 0.9 and p["mean_iou"] >= 0.95
    assert p["score_delta_max"] <= 0.02 and r["fp32_check"]["max_rel_delta"] < 1e-5
    assert {"Exp", "Sigmoid", "Concat"} <= set(r["tail_ops"]) and len(r["head_convs"]) == 2
    assert r["int8_bytes"] < 0.4 * r["fp32_bytes"] and r["calib_images"] == 8
    # independently of the report: every Exp and Sigmoid of the IR reads float, not a
    # FakeQuantize; every convolution has int8 weights and reads quantized data (a
    # FakeQuantize, maybe through the ops it commutes with: maxpool, pad, upsample, concat)
    model = ov.Core().read_model(str(d / "t.int8.xml"))
    ops = model.get_ordered_ops()
    inputs = lambda n: [n.input_value(i).get_node() for i in range(n.get_input_size())]  # noqa: E731
    assert not [n for n in ops if n.get_type_name() in ("Exp", "Sigmoid")
                and any(i.get_type_name() == "FakeQuantize" for i in inputs(n))]

    def quantized(n) -> bool:
        kind = n.get_type_name()
        if kind in ("MaxPool", "Pad", "Interpolate"):
            return quantized(inputs(n)[0])
        return all(map(quantized, inputs(n))) if kind == "Concat" else kind == "FakeQuantize"

    def weight(n):
        while n.get_type_name() != "Constant":
            n = inputs(n)[0]
        return n.get_element_type().get_type_name()
    convs = [n for n in ops if n.get_type_name() == "Convolution"]
    assert len(convs) == 13 and all(quantized(inputs(c)[0]) for c in convs)
    assert [weight(inputs(c)[1]) for c in convs] == ["i8"] * 13


def test_int8_refuses_a_model_that_lost_its_detections(tiny_model, shapes_data, tmp_path, monkeypatch):
    from yolo_slim.deploy import openvino_int8
    from yolo_slim.deploy.quantize import QuantOptions
    real = openvino_int8.parity_runs

    def lost(*a, **k):
        return {**real(*a, **k), "match_rate": 0.3}
    monkeypatch.setattr(openvino_int8, "parity_runs", lost)
    # the FP32 graph stands in for NNCF's (seconds saved): the refusal is what is tested
    monkeypatch.setattr(openvino_int8, "quantize_ir",
                        lambda m, images, opts: (m, *openvino_int8.decode_tail(m)))
    with pytest.raises(YoloSlimError, match="finds only 30% .* not written"):
        openvino_int8.export_int8(tiny_model, str(tmp_path / "t.int8.xml"), {"img_size": 64},
                                  shapes_data, QuantOptions(calib_images=2))
    assert os.listdir(tmp_path) == []


def test_export_script_formats(tiny_model, tmp_path, run_script):
    pt = tmp_path / "t.pt"
    save_checkpoint(tiny_model, str(pt))
    rc, so, se = run_script("export.py", "--weights", pt, "--format", "openvino", "--img-size", "64")
    assert rc == 0, se
    assert "openvino check: openvino vs torch on a batch of 2" in so and ", f32" in so
    assert (tmp_path / "t.xml").is_file() and (tmp_path / "t.bin").is_file()
    assert json.loads((tmp_path / "t.xml.args.json").read_text())["format"] == "openvino"
    rc, so, se = run_script("export.py", "--weights", pt, "--format", "ncnn", "--int8",
                            "--calib-data", "x.data")
    assert rc == 2 and se.strip() == "error: --int8 needs --format onnx or openvino and --calib-data"
