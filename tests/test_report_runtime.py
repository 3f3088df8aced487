"""REPORT.md per runtime (report/pipeline_report.py --runtime): the shipped files of that runtime
are found by their suffix, scored through the same evaluate path (the torch mAP for FP32 files)
and timed against the baseline exported to the same runtime; INT8 is told from the file itself."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import randomize_bn  # noqa: E402

from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.deploy.backends import backend  # noqa: E402
from yolo_slim.eval.evaluate import evaluate, validation_loader  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402
from yolo_slim.report import pipeline_report as pr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_model() -> Darknet:
    torch.manual_seed(3)
    m = Darknet(parse_cfg(str(REPO / "cfg" / "demo.cfg")))
    randomize_bn(m, 3)
    return m.eval()


@pytest.mark.parametrize("runtime, name", [("openvino", "demo.xml"), ("ncnn", "demo.ncnn.param"),
                                           ("onnxruntime", "demo.onnx")])
def test_shipped_files_of_a_runtime_score_the_torch_map(runtime, name, demo_model, shapes_data, tmp_path):
    pytest.importorskip({"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn"}[runtime])
    (tmp_path / "export").mkdir()
    path = tmp_path / "export" / name
    backend(runtime).export(demo_model, str(path), pr_opts(64))
    # a file of another runtime in the same folder is not this runtime's shipped file
    if runtime != "onnxruntime":
        backend("onnxruntime").export(demo_model, str(tmp_path / "export" / "other.onnx"), pr_opts(64))
    files = pr.shipped_files(str(tmp_path), shapes_data, rounds=2, baseline=demo_model, runtime=runtime)
    assert [f["name"] for f in files] == [f"export/{name}"]
    f = files[0]
    assert f["runtime"] == runtime and f["int8"] is False and f["speedup"] > 0
    assert f["size"] == sum(p.stat().st_size for p in (tmp_path / "export").iterdir()
                            if p.name.startswith("demo."))  # the file and its weights beside it
    loader, _ = validation_loader(shapes_data, 64, 16)
    with torch.no_grad():
        ref = evaluate(demo_model, loader, progress=False)
    assert f["map50"] == pytest.approx(float(ref["map50"]), abs=3e-5)
    assert f["map"] == pytest.approx(float(ref["map"]), abs=3e-5)
    text = "\n".join(pr.deploy_table(files))
    assert f"## The files that ship ({runtime}, CPU)" in text and f"run in {runtime}" in text


def test_int8_is_told_from_the_file(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text('<net><layers><layer id="3" name="fq" type="FakeQuantize" version="opset1"/></layers></net>')
    plain = tmp_path / "b.xml"
    plain.write_text('<net><layers><layer id="3" name="c" type="Convolution" version="opset1"/></layers></net>')
    assert pr.is_int8(str(xml)) is True and pr.is_int8(str(plain)) is False
    assert pr.is_int8(str(tmp_path / "c.ncnn.param")) is False


def pr_opts(size: int):
    from yolo_slim.deploy.export import ExportOptions
    return ExportOptions(img_size=size, check_batch=1)
