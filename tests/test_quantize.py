"""INT8 export (yolo_slim/deploy/quantize.py): the decode tail stays in float, found from the
graph; INT8 detections match FP32 within stated tolerances; quantizing the tail is what breaks
a detector (the contrast); -inf maxpool padding becomes exact edge padding; a calibration set
without a readable image is a one-line error that leaves nothing behind. REPORT.md: the files
that ship, and its opening headline (their speed-up over the baseline FP32 vs the FLOPs cut)."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import randomize_bn  # noqa: E402

from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.nn.weights import save_checkpoint  # noqa: E402
from yolo_slim.deploy import graph_edit  # noqa: E402
from yolo_slim.deploy.export import ExportOptions, export_onnx  # noqa: E402
from yolo_slim.deploy.runtime import ort_session  # noqa: E402
from yolo_slim.deploy.quantize import QuantOptions, compare_detections, export_int8  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "cfg" / "yolov3-tiny.cfg"  # 6 maxpools, the last one size 2 stride 1

# INT8 vs FP32 on the calibration images of a random-weight yolov3-tiny (64 px): the stated
# tolerance. Measured: 96% found again, mean IoU 0.98, score |delta| <= 0.0025.
MIN_MATCH, MIN_IOU, MAX_SCORE_DELTA = 0.9, 0.95, 0.02


@pytest.fixture(scope="module")
def tiny_model() -> Darknet:
    torch.manual_seed(0)
    m = Darknet(parse_cfg(str(TINY)))
    randomize_bn(m, 7)
    return m.eval()


@pytest.fixture(scope="module")
def int8(tiny_model, shapes_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("int8") / "t.int8.onnx")
    report = export_int8(tiny_model, out, ExportOptions(img_size=64), shapes_data,
                         QuantOptions(calib_images=8))
    return out, report


def tail_walk(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Independent of graph_edit: nodes from the outputs back to the first Conv (or a DQ that
    feeds one), through value inputs only."""
    prod = {o: n for n in model.graph.node for o in n.output}
    seen, out, stack = set(), [], [o.name for o in model.graph.output]
    while stack:
        n = prod.get(stack.pop())
        if n is None or n.name in seen or n.op_type == "Conv":
            continue
        seen.add(n.name)
        out.append(n)
        if n.op_type != "Shape":
            stack += list(n.input)
    return out


def test_decode_tail_stays_float_and_the_body_is_int8(int8):
    path, report = int8
    m = onnx.load(path)
    tail = tail_walk(m)
    ops = {n.op_type for n in tail}
    assert {"Sigmoid", "Exp", "Mul", "Add", "Concat"} <= ops  # the decode is there ...
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}  # ... and all of it is float
    assert report["float_head_outputs"] == 2 and len(report["head_convs"]) == 2
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 13
    for c in convs:  # every conv: int8 input and per-channel int8 weights
        x, w = prod[c.input[0]], prod[c.input[1]]
        assert x.op_type == w.op_type == "DequantizeLinear"
        assert init[w.input[0]].dtype == np.int8
        assert init[w.input[1]].size == init[w.input[0]].shape[0]  # one scale per filter
    scales = [init[n.input[1]] for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert all(np.isfinite(s).all() and (s > 0).all() for s in scales)  # no -inf pad leaked in
    # yolov3-tiny's six pools: the five size-2 stride-2 ones read no padding and export without
    # a Pad; the size-2 stride-1 one keeps its -inf edge Pad, rewritten for quantization
    assert report["edge_padded_maxpools"] == 1
    assert report["int8_bytes"] < 0.3 * report["fp32_bytes"]
    assert json.loads(Path(path + ".quant.json").read_text())["parity"] == report["parity"]


def test_int8_detections_match_fp32_within_tolerance(int8, tiny_model, tmp_path):
    path, report = int8
    p = report["parity"]  # measured on the 8 calibration images at export
    assert p["ref_detections"] > 50
    assert p["match_rate"] >= MIN_MATCH and p["mean_iou"] >= MIN_IOU
    assert p["score_delta_max"] <= MAX_SCORE_DELTA
    # the same on fixed inputs outside the calibration set, recomputed here
    fp32 = str(tmp_path / "f.onnx")
    export_onnx(tiny_model, fp32, img_size=64)
    x = np.random.default_rng(3).random((4, 3, 64, 64), dtype=np.float32)
    ref, got = (ort_session(f).run(None, {"images": x})[0] for f in (fp32, path))
    c = compare_detections([ref], [got])
    assert c["ref_detections"] > 20 and c["match_rate"] >= MIN_MATCH and c["mean_iou"] >= MIN_IOU
    assert c["score_delta_max"] <= MAX_SCORE_DELTA
    np.testing.assert_allclose(got[..., 4:], ref[..., 4:], atol=MAX_SCORE_DELTA)


def test_quantizing_the_tail_is_what_breaks_it(tiny_model, shapes_data, tmp_path):
    """The failure users report: with the tail quantized, one 8-bit scale spans 0..64 px
    coordinates and 0..1 scores, so scores collapse and nothing is detected; the export
    refuses such a model unless min_match is 0."""
    bad = QuantOptions(calib_images=8, keep_tail_float=False, float_head=False)
    out = tmp_path / "bad.int8.onnx"
    with pytest.raises(YoloSlimError, match=r"finds only \d+% of the FP32"):
        export_int8(tiny_model, str(out), ExportOptions(img_size=64), shapes_data, bad)
    assert not out.exists() and os.listdir(tmp_path) == []
    bad.min_match = 0
    r = export_int8(tiny_model, str(out), ExportOptions(img_size=64), shapes_data, bad)
    assert r["parity"]["match_rate"] < 0.1 and r["parity"]["score_delta_mean"] > 0.1


def test_raw_heads_quantize_and_decode(tiny_model, shapes_data, tmp_path):
    out = str(tmp_path / "raw.int8.onnx")
    r = export_int8(tiny_model, out, ExportOptions(img_size=64, raw=True), shapes_data,
                    QuantOptions(calib_images=4, calib_method="percentile"))
    assert r["outputs"] == ["raw0", "raw1"] and r["float_head_outputs"] == 2
    assert set(r["tail_ops"]) <= {"Reshape", "Transpose", "Shape", "Gather", "Unsqueeze", "Concat"}
    assert r["parity"]["match_rate"] >= MIN_MATCH
    assert not {n.op_type for n in tail_walk(onnx.load(out))} & {"QuantizeLinear", "DequantizeLinear"}


def test_edge_padding_replaces_minus_inf_exactly(tiny_model, tmp_path):
    f = str(tmp_path / "f.onnx")
    export_onnx(tiny_model, f, img_size=64)
    m = onnx.load(f)
    graph_edit.name_nodes(m)
    assert graph_edit.edge_pad_maxpools(m) == 1  # the size-2 stride-1 pool (the others need no pad)
    assert graph_edit.drop_unused_initializers(m) >= 0
    e = str(tmp_path / "e.onnx")
    onnx.save(m, e)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    a, b = (ort_session(p).run(None, {"images": x})[0] for p in (f, e))
    assert np.array_equal(a, b)  # bit-exact: max over a window that holds the edge value


def test_compare_detections_identity_and_shift():
    rng = np.random.default_rng(0)
    det = np.concatenate([rng.uniform(8, 56, (2, 50, 2)), rng.uniform(4, 16, (2, 50, 2)),
                          rng.uniform(0, 1, (2, 50, 4))], -1).astype(np.float32)
    same = compare_detections([det], [det.copy()])
    assert same["match_rate"] == 1.0 and same["score_delta_max"] == 0 and same["mean_iou"] == 1.0
    moved = det.copy()
    moved[..., :2] += 100  # every box elsewhere: nothing found again
    assert compare_detections([det], [moved])["match_rate"] == 0.0


def make_bad_data(root: Path, corrupt: bool) -> str:
    (root / "images").mkdir(parents=True)
    names = []
    for k in range(3):
        p = root / "images" / f"{k}.png"
        if corrupt:  # a valid PNG header (so the size is readable), then garbage
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (64).to_bytes(4, "big") * 2
                          + b"\x08\x02\x00\x00\x00" + b"\x00" * 4 + b"garbage" * 10)
        else:
            p.write_text("not an image")
        names.append(str(p))
    names.append(str(root / "images" / "missing.jpg"))
    (root / "train.txt").write_text("\n".join(names) + "\n")
    (root / "d.data").write_text("classes=80\ntrain=train.txt\nvalid=train.txt\n")
    return str(root / "d.data")


@pytest.mark.parametrize("corrupt", [False, True])
def test_calibration_set_without_readable_image_is_a_clear_error(tiny_model, tmp_path,
                                                                  run_script, corrupt):
    data = make_bad_data(tmp_path / "bad", corrupt)
    pt = tmp_path / "t.pt"
    save_checkpoint(tiny_model, str(pt))
    out = tmp_path / "t.int8.onnx"
    rc, so, se = run_script("export.py", "--weights", pt, "--format", "onnx", "--img-size", "64",
                            "--int8", "--calib-data", data, "--output", out)
    assert rc == 2 and "Traceback" not in se, se
    assert se.startswith("error: calibration set") and "no readable image" in se
    assert len(se.strip().splitlines()) == 1
    assert not out.exists() and not Path(str(out) + ".quant.json").exists()


def test_export_script_int8_end_to_end(tiny_model, shapes_data, tmp_path, run_script):
    pt = tmp_path / "t.pt"
    save_checkpoint(tiny_model, str(pt))
    rc, so, se = run_script("export.py", "--weights", pt, "--format", "onnx", "--img-size", "64",
                            "--int8", "--calib-data", shapes_data, "--calib-images", "4",
                            "--calib-method", "entropy")
    assert rc == 0, se
    out = tmp_path / "t.int8.onnx"  # the default name
    assert out.is_file() and "FP32 detections found again" in so
    r = json.loads(Path(str(out) + ".quant.json").read_text())
    assert r["options"]["calib_method"] == "entropy" and r["calib_images"] == 4
    rc, _, se = run_script("export.py", "--weights", pt, "--format", "onnx", "--int8")
    assert rc == 2 and "--calib-data" in se


@pytest.fixture(scope="module")
def shipped_run(shapes_data, tmp_path_factory):
    """A run folder as make slim leaves it: baseline/ (demo.cfg, random BN), finetune/ (demo.cfg
    with every non-head conv halved: fewer FLOPs), export/ (the fine-tuned model, FP32 + INT8)."""
    from yolo_slim.nn.weights import save_darknet_weights
    run = tmp_path_factory.mktemp("run")
    text = (REPO / "cfg" / "demo.cfg").read_text()
    half = re.sub(r"filters=(\d+)", lambda m: m.group(0) if m.group(1) == "30" else
                  f"filters={int(m.group(1)) // 2}", text)  # 30 = the heads: 3 x (5 classes + 5)
    models = {}
    for folder, cfg in (("baseline", text), ("finetune", half)):
        (run / folder).mkdir()
        (run / folder / "demo.cfg").write_text(cfg)
        torch.manual_seed(0)
        models[folder] = Darknet(parse_cfg(str(run / folder / "demo.cfg")))
        randomize_bn(models[folder], 0)
        save_darknet_weights(models[folder], str(run / folder / "demo.weights"))
    (run / "export").mkdir()
    export_onnx(models["finetune"], str(run / "export" / "m.onnx"), img_size=64)
    export_int8(models["finetune"], str(run / "export" / "m.int8.onnx"), ExportOptions(img_size=64),
                shapes_data, QuantOptions(calib_images=4))
    return run, models


# ms per round for the fake timer: round 2 is a load burst that hits every model alike. The
# per-round ratios baseline / FP32 are 2.5, 2.5, 2.0 (median 2.5) while the ratio of the
# medians is 12 / 6 = 2.0: the headline must be the former. Baseline / INT8: 2, 2, 2.4 -> 2.0.
FAKE_MS = {"baseline FP32": [10, 40, 12], "export/m.onnx": [4, 16, 6], "export/m.int8.onnx": [5, 20, 5],
           "baseline": [10, 40, 12], "fine-tuned": [4, 16, 6]}


@pytest.fixture
def fake_timer(monkeypatch) -> list[list[str]]:
    """The names of every time_rounds call (one call = one interleaved run), in order."""
    from yolo_slim.deploy import ort_bench
    calls = []

    def fake(paths, *a, **k):
        calls.append(sorted(paths))
        return {n: FAKE_MS[n] for n in paths}
    monkeypatch.setattr(ort_bench, "time_rounds", fake)
    return calls


def test_report_rows_for_the_files_that_ship(shipped_run, shapes_data):
    """REPORT.md's deployment table: every <run>/export/*.onnx scored through onnxruntime,
    FP32 before INT8, sizes relative to the first file, interleaved latency."""
    from yolo_slim.report.pipeline_report import deploy_table, shipped_files
    run, _ = shipped_run
    files = shipped_files(str(run), shapes_data, rounds=3)
    assert files[0]["latency"]["ratio_median"] == 1.0 and "speedup" not in files[0]
    rows = deploy_table(files)
    table = [r for r in rows if r.startswith("| `export/")]
    assert [r.split("|")[2].strip() for r in table] == ["FP32", "INT8"]
    assert "(100%)" in table[0] and "AVX2" in "\n".join(rows)
    assert shipped_files(str(run / "nothing"), shapes_data) == [] and deploy_table([]) == []


def headline_rows(text: str) -> list[list[str]]:
    """The cells of the headline table, which must come before the data paragraph."""
    head = text[:text.index("Data: ")]
    return [[c.strip() for c in r.split("|")[1:-1]] for r in head.splitlines() if r.startswith("| `")]


def test_report_opens_with_the_shipped_files_speedup(shipped_run, shapes_data, fake_timer):
    """The headline: speed-up = median per-round ratio baseline / file from the one interleaved
    run (fake timer: 10 ms vs 4 ms -> 2.50x, vs 5 ms -> 2.00x), FLOPs reduction = baseline /
    fine-tuned FLOPs of the models, and their ratio; scores are the files' own ONNX scores.
    The baseline is timed in the same interleaved run as the shipped files."""
    from yolo_slim.analysis.cost import model_flops
    from yolo_slim.report.pipeline_report import build_report, shipped_files
    run, models = shipped_run
    red = model_flops(models["baseline"], (64, 64)) / model_flops(models["finetune"], (64, 64))
    assert 3 < red < 4.2  # halved channels: about a quarter of the FLOPs
    text = build_report(str(run), shapes_data, 64)
    assert fake_timer == [["baseline", "fine-tuned"],  # the stage table's run, then the files'
                          ["baseline FP32", "export/m.int8.onnx", "export/m.onnx"]]
    assert text.splitlines()[2] == "**The files that ship vs the baseline FP32**"
    assert "| FLOPs reduction | speed-up ÷ FLOPs reduction | mAP@0.5 | mAP@0.5:0.95 |" in text
    files = {f["name"]: f for f in shipped_files(str(run), shapes_data, rounds=3)}
    rows = headline_rows(text)
    assert [r[:5] for r in rows] == [
        ["`export/m.onnx`", "FP32", "2.50x", f"{red:.2f}x", f"{2.5 / red:.2f}"],
        ["`export/m.int8.onnx`", "INT8", "2.00x", f"{red:.2f}x", f"{2.0 / red:.2f}"]]
    assert [r[5:] for r in rows] == [[f"{f['map50']:.3f}", f"{f['map']:.3f}"] for f in files.values()]
    # label-free: the score columns are agreement with the reference, as in the files' table
    ref = (str(run / "baseline" / "demo.cfg"), str(run / "baseline" / "demo.weights"))
    text = build_report(str(run), shapes_data, 64, reference=ref)
    assert "| speed-up ÷ FLOPs reduction | agreement@0.5 | agreement@0.5:0.95 |" in text
    assert [r[2] for r in headline_rows(text)] == ["2.50x", "2.00x"]


def test_report_without_a_baseline_has_no_headline(shipped_run, shapes_data, fake_timer, tmp_path):
    from yolo_slim.report.pipeline_report import build_report
    run, _ = shipped_run
    shutil.copytree(run / "finetune", tmp_path / "finetune")
    shutil.copytree(run / "export", tmp_path / "export")
    text = build_report(str(tmp_path), shapes_data, 64)
    assert fake_timer[-1] == ["export/m.int8.onnx", "export/m.onnx"]
    assert "speed-up vs baseline FP32" not in text and headline_rows(text) == []
    assert "| `export/m.onnx` | FP32 |" in text  # the files' own table is still there


@pytest.mark.parametrize("eo, qo, msg", [
    (dict(opset=11), {}, "opset 13"),
    (dict(nms=True), {}, "--nms"),
    (dict(img_size=(64, 96)), {}, "square"),
    ({}, dict(calib_method="kl"), "--calib-method"),
    ({}, dict(calib_images=0), "--calib-images"),
])
def test_int8_option_errors(tiny_model, shapes_data, tmp_path, eo, qo, msg):
    """Refused before any export or calibration work, with the flag named."""
    with pytest.raises(YoloSlimError, match=msg):
        export_int8(tiny_model, str(tmp_path / "x.onnx"), ExportOptions(**{"img_size": 64, **eo}),
                    shapes_data, QuantOptions(**qo))
    assert os.listdir(tmp_path) == []
