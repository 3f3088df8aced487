"""ONNX export: onnxruntime against an independent numpy darknet forward (tests/darknet_ref.py)
on real, pruned-looking and unseen random cfgs; dynamic/static batch; --raw; --nms against a
plain numpy NMS; the check that refuses a bad export; cfg/weights mismatch through the script;
evaluate.py --onnx scoring an export exactly as the torch path scores the model."""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import darknet_ref  # noqa: E402
from netgen import random_darknet, randomize_bn  # noqa: E402

from yolo_slim.darknet.cfg import parse_cfg, parse_cfg_text, write_cfg  # noqa: E402
from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.deploy.export import ExportOptions, export_onnx  # noqa: E402
from yolo_slim.deploy.runtime import ort_session  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402
from yolo_slim.nn.weights import load_model, save_darknet_weights  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet-cfg"
REAL = ["yolov3-tiny", "yolov4-tiny"]

# An odd hand-made cfg: pruned-like channel counts (13, 7, 29), maxpool 2/1 after a linear conv
# (zero padding would differ from darknet's -inf), stride_x != stride_y, dilation, a grouped
# conv, route groups, a two-source shortcut, mish/swish, a conv without BN, scale_x_y and
# new_coords heads, and a non-square input.
ODD_CFG = """[net]
width=96
height=64
channels=3
[convolutional]
batch_normalize=1
filters=13
size=3
stride=1
pad=1
activation=linear
[maxpool]
size=2
stride=1
[convolutional]
batch_normalize=1
filters=14
size=3
stride_x=2
stride_y=1
pad=1
activation=mish
[maxpool]
size=2
stride_x=1
stride_y=2
[convolutional]
batch_normalize=1
filters=14
size=3
dilation=2
pad=1
groups=7
activation=swish
[route]
layers=-1
groups=2
group_id=1
[convolutional]
filters=7
size=1
activation=leaky
[convolutional]
batch_normalize=1
filters=7
size=3
pad=1
activation=leaky
[shortcut]
from=-2,-3
activation=leaky
[convolutional]
batch_normalize=1
filters=29
size=3
stride=2
pad=1
activation=mish
[convolutional]
filters=21
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=5,7,9,11,13,17,21,29,33,41,45,50
classes=2
num=6
scale_x_y=1.05
[route]
layers=-3
[upsample]
stride=2
[route]
layers=-1,-7
[convolutional]
filters=21
size=1
activation=logistic
[yolo]
mask=3,4,5
anchors=5,7,9,11,13,17,21,29,33,41,45,50
classes=2
num=6
scale_x_y=2.0
new_coords=1
"""


def pruned_like(cfg_text: str, seed: int) -> str:
    """The same layout with reduced, odd filter counts, as a channel-pruned cfg looks; convs
    feeding a [yolo] keep theirs, producers of grouped routes stay divisible by the groups."""
    defs = parse_cfg_text(cfg_text, "pruned.cfg")
    rng = random.Random(seed)
    mult = {}
    for i, d in enumerate(defs[1:]):
        if d["type"] == "route" and int(d.get("groups", 1)) > 1:
            for r in map(int, d["layers"].split(",")):
                mult[i + r if r < 0 else r] = int(d["groups"])
    for i, d in enumerate(defs[1:]):
        nxt = defs[i + 2]["type"] if i + 2 < len(defs) else ""
        if d["type"] == "convolutional" and nxt != "yolo":
            m = mult.get(i, 1)
            f = int(d["filters"]) // m
            d["filters"] = str(m * max(1, rng.randrange(1, max(2, f // 2), 2)))
    return write_cfg(defs)


def random_weights(cfg_path: str, weights_path: str, seed: int) -> Darknet:
    """Random darknet .weights for a cfg (BN stats randomised), written and read back the way a
    user loads them."""
    torch.manual_seed(seed)
    model = Darknet(parse_cfg(cfg_path))
    randomize_bn(model, seed)
    save_darknet_weights(model, weights_path)
    return load_model(cfg_path, weights_path)


def ref_forward(cfg_path: str, weights_path: str, x: np.ndarray) -> np.ndarray:
    text = Path(cfg_path).read_text()
    return darknet_ref.forward(text, darknet_ref.read_weights(weights_path), x)


def ort_run(path: str, x: np.ndarray) -> list[np.ndarray]:
    return ort_session(path).run(None, {"images": x.astype(np.float32)})


def assert_close(got: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> None:
    """|got - ref| <= tol * max(1, |ref|): boxes are in pixels, so the bound scales."""
    assert got.shape == ref.shape
    rel = np.abs(got.astype(np.float64) - ref) / np.maximum(1.0, np.abs(ref))
    assert rel.max() <= tol, f"max relative delta {rel.max():.3g}"


def setup_cfg(tmp_path: Path, text: str, seed: int = 0) -> tuple[str, str, Darknet]:
    cfg = tmp_path / "m.cfg"
    cfg.write_text(text)
    w = str(tmp_path / "m.weights")
    return str(cfg), w, random_weights(str(cfg), w, seed)


def x_batch(b: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((b, 3, h, w), dtype=np.float32)


@pytest.mark.parametrize("name, hw", [("yolov3-tiny", (64, 64)), ("yolov4-tiny", (64, 96))])
def test_real_cfg_matches_darknet_reference(tmp_path, name, hw):
    cfg = CORPUS / "AlexeyAB" / f"{name}.cfg"
    if not cfg.is_file():
        pytest.skip("corpus not found")
    cfg_path, w, model = setup_cfg(tmp_path, cfg.read_text())
    entry = next(e for e in json.loads((CORPUS / "index.json").read_text())
                 if e["path"] == f"AlexeyAB/{name}.cfg")
    assert darknet_ref.read_weights(w).size == entry["weights_floats"]  # independent layout check
    out = str(tmp_path / "m.onnx")
    report = export_onnx(model, out, ExportOptions(img_size=hw))
    assert report["max_rel_delta"] < 1e-5 and report["outputs"] == ["detections"]
    x = x_batch(2, *hw)
    got = ort_run(out, x)[0]
    n = sum(3 * (hw[0] // s) * (hw[1] // s) for s in (32, 16))
    assert got.shape == (2, n, 85)
    assert_close(got, ref_forward(cfg_path, w, x))
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert "BatchNormalization" not in ops  # folded into the convs


@pytest.mark.parametrize("src", ["yolov3-tiny", "yolov4-tiny", "odd"])
def test_pruned_and_odd_cfgs_match_darknet_reference(tmp_path, src):
    if src == "odd":
        text, hw = ODD_CFG, (64, 96)
    else:
        if not (CORPUS / "AlexeyAB").is_dir():
            pytest.skip("corpus not found")
        text, hw = pruned_like((CORPUS / "AlexeyAB" / f"{src}.cfg").read_text(), seed=3), (64, 64)
    cfg_path, w, model = setup_cfg(tmp_path, text, seed=5)
    out = str(tmp_path / "p.onnx")
    export_onnx(model, out, img_size=hw)
    x = x_batch(2, *hw)
    assert_close(ort_run(out, x)[0], ref_forward(cfg_path, w, x))
    if src == "odd":
        assert "Mish" in {n.op_type for n in onnx.load(out).graph.node}  # native at opset 18


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_unseen_random_cfgs_match_darknet_reference(tmp_path, seed):
    cfg_path, w, model = setup_cfg(tmp_path, random_darknet(seed, size=64), seed)
    out = str(tmp_path / "r.onnx")
    export_onnx(model, out, img_size=64)
    x = x_batch(2, 64, 64, seed)
    assert_close(ort_run(out, x)[0], ref_forward(cfg_path, w, x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    cfg = CORPUS / "AlexeyAB" / "yolov3-tiny.cfg"
    if not cfg.is_file():
        pytest.skip("corpus not found")
    return setup_cfg(tmp, cfg.read_text(), seed=7)


def test_dynamic_batch_and_static(tiny, tmp_path):
    _, _, model = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    out = str(tmp_path / "d.onnx")
    export_onnx(model, out, img_size=64)
    # the caller's model is untouched: still training, BN still there, same tensors
    assert model.training and model.module_list[0].bn is not None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.eval()
    dim = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param == "batch" and [d.dim_value for d in dim[1:]] == [3, 64, 64]
    for b in (1, 3):
        x = x_batch(b, 64, 64, b)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = ort_run(out, x)[0]
        assert got.shape == (b, 3 * (4 + 16), 85)
        assert_close(got, ref)
    out_s = str(tmp_path / "s.onnx")
    report = export_onnx(model, out_s, img_size=64, static=True, batch_size=2)
    assert report["check_batch"] == 2 and not report["dynamic_batch"]
    assert onnx.load(out_s).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    with pytest.raises(Exception):  # a static graph refuses another batch
        ort_run(out_s, x_batch(3, 64, 64))


def test_raw_outputs(tiny, tmp_path):
    _, _, model = tiny
    model.eval()
    out = str(tmp_path / "raw.onnx")
    report = export_onnx(model, out, img_size=(64, 96), raw=True)
    assert report["outputs"] == ["raw0", "raw1"]
    assert [o.name for o in onnx.load(out).graph.output] == ["raw0", "raw1"]
    x = x_batch(3, 64, 96)
    got = ort_run(out, x)
    with torch.no_grad():
        ref = model.forward_raw(torch.from_numpy(x))
    assert [g.shape for g in got] == [(3, 3, 2, 3, 85), (3, 3, 4, 6, 85)]
    for g, r in zip(got, ref):
        assert_close(g, r.numpy())
    # the raw maps decode to exactly the contract's detections
    dec = model.decode([torch.from_numpy(g) for g in got], (64, 96)).numpy()
    assert_close(dec, model(torch.from_numpy(x)).detach().numpy())


def numpy_nms(det: np.ndarray, conf: float, iou: float, max_det: int):
    """Plain per-image, per-class greedy NMS on decoded [B, N, 5+nc] -> rows sorted by
    (image, score desc): boxes x1y1x2y2, scores, classes, batch."""
    rows = []
    for b in range(det.shape[0]):
        xy, wh = det[b, :, :2].astype(np.float64), det[b, :, 2:4].astype(np.float64)
        box = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
        score = det[b, :, 5:] * det[b, :, 4:5]
        mine = []
        for c in range(score.shape[1]):
            cand = sorted(np.nonzero(score[:, c] > conf)[0], key=lambda i: -score[i, c])
            kept: list[int] = []
            for i in cand:
                ok = True
                for k in kept:
                    lt, rb = np.maximum(box[i, :2], box[k, :2]), np.minimum(box[i, 2:], box[k, 2:])
                    inter = np.prod(np.clip(rb - lt, 0, None))
                    union = np.prod(box[i, 2:] - box[i, :2]) + np.prod(box[k, 2:] - box[k, :2]) - inter
                    if union > 0 and inter / union > iou:
                        ok = False
                        break
                if ok:
                    kept.append(i)
            mine += [(float(score[i, c]), box[i], c) for i in kept]
        mine.sort(key=lambda r: -r[0])
        rows += [(b, *r) for r in mine[:max_det]]
    return (np.array([r[2] for r in rows]).reshape(-1, 4), np.array([r[1] for r in rows]),
            np.array([r[3] for r in rows]), np.array([r[0] for r in rows]))


@pytest.mark.parametrize("max_det", [300, 4])
def test_nms_in_graph_matches_numpy_nms(tiny, tmp_path, max_det):
    _, _, model = tiny
    conf, iou = 0.3, 0.45
    out, det_out = str(tmp_path / "n.onnx"), str(tmp_path / "det.onnx")
    report = export_onnx(model, out, img_size=64, nms=True, conf_thres=conf, iou_thres=iou,
                         max_det=max_det)
    assert report["outputs"] == ["boxes", "scores", "classes", "batch_index"]
    export_onnx(model, det_out, img_size=64)
    x = x_batch(3, 64, 64, 11)
    boxes, scores, classes, batch = ort_run(out, x)
    rb, rs, rc, rbi = numpy_nms(ort_run(det_out, x)[0], conf, iou, max_det)
    assert len(rs) >= 12  # the case is not trivially empty (and the cap below bites)
    assert boxes.shape == (len(rs), 4) and classes.dtype == np.int64 and batch.dtype == np.int64
    np.testing.assert_array_equal(batch, rbi)
    np.testing.assert_array_equal(classes, rc)
    np.testing.assert_allclose(scores, rs, rtol=1e-6)
    np.testing.assert_allclose(boxes, rb, rtol=1e-5, atol=1e-4)
    if max_det == 4:
        assert np.bincount(batch).tolist() == [4, 4, 4]
    # nothing above the threshold: empty outputs of the right rank
    export_onnx(model, out, img_size=64, nms=True, conf_thres=0.9999)
    boxes, scores, classes, batch = ort_run(out, x)
    assert boxes.shape == (0, 4) and scores.shape == classes.shape == batch.shape == (0,)


def test_bad_export_is_refused_and_not_left(tiny, tmp_path):
    _, _, model = tiny
    out = tmp_path / "bad.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(YoloSlimError, match=r"max \|delta\| = [0-9.e-]+"):
        export_onnx(model, str(out), img_size=64, tol=1e-12)
    assert out.read_bytes() == b"previous"  # a failed export never replaces the output
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx"]  # and leaves no temp files
    with pytest.raises(YoloSlimError, match="img-size"):
        export_onnx(model, str(out), img_size=(64, 80))  # 80/32: upsample + route mismatch
    with pytest.raises(YoloSlimError, match="exclude"):
        export_onnx(model, str(out), raw=True, nms=True)


def test_script_exports_and_refuses_mismatched_weights(tmp_path, run_script):
    src = CORPUS / "AlexeyAB"
    if not src.is_dir():
        pytest.skip("corpus not found")
    cfg3, w3, _ = setup_cfg(tmp_path, (src / "yolov3-tiny.cfg").read_text())
    out = tmp_path / "y.onnx"
    rc, so, se = run_script("export.py", "--cfg", cfg3, "--weights", w3, "--format", "onnx",
                            "--img-size", "64", "96", "--output", str(out))
    assert rc == 0, se
    assert "max |delta|" in so and out.is_file()
    assert ort_run(str(out), x_batch(2, 64, 96))[0].shape == (2, 3 * (6 + 24), 85)
    rc, so, se = run_script("export.py", "--cfg", str(src / "yolov4-tiny.cfg"), "--weights", w3,
                            "--format", "onnx", "--img-size", "64", "--output",
                            str(tmp_path / "z.onnx"))
    assert rc == 2 and "Traceback" not in se
    assert "floats" in se and "cfg needs" in se
    assert not (tmp_path / "z.onnx").exists()


@pytest.mark.parametrize("opset", [11, 17, 18])
def test_opsets(tmp_path, opset):
    model = Darknet(parse_cfg_text(ODD_CFG, "odd.cfg"))
    randomize_bn(model, 2)
    out = str(tmp_path / "o.onnx")
    report = export_onnx(model, out, img_size=(64, 96), opset=opset)
    assert report["max_rel_delta"] < 1e-5
    m = onnx.load(out)
    assert m.opset_import[0].version == opset
    # native Mish from opset 18, Softplus/Tanh/Mul below
    assert ("Mish" in {n.op_type for n in m.graph.node}) == (opset >= 18)
    with pytest.raises(YoloSlimError, match="opset"):
        export_onnx(model, out, img_size=(64, 96), opset=10)


def test_evaluate_onnx_matches_torch_path(tmp_path, run_script, shapes_data):
    """evaluate.py --onnx (onnxruntime) and --weights (torch) give the same metrics: the same
    letterbox, NMS and mAP code, only the forward differs (float rounding). A random-weight
    model scores little, but thousands of detections enter the AP, so a single box that NMS
    or matching treated differently would show. Also a --raw export (decoded by --cfg), a
    static-batch export fed a ragged last batch, and the refusals."""
    from yolo_slim.nn.weights import save_checkpoint
    from yolo_slim.deploy.onnx_eval import evaluate_onnx
    cfg = str(Path(__file__).resolve().parents[1] / "cfg" / "demo.cfg")  # 5 classes, like the set
    torch.manual_seed(1)
    model = Darknet(parse_cfg(cfg))
    randomize_bn(model, 1)
    model.eval()
    pt, f, fr, fs = (str(tmp_path / n) for n in ("m.pt", "m.onnx", "raw.onnx", "static.onnx"))
    save_checkpoint(model, pt)
    export_onnx(model, f, img_size=64)
    export_onnx(model, fr, img_size=64, raw=True)
    export_onnx(model, fs, img_size=64, static=True, batch_size=2)
    common = ["--data", shapes_data, "--batch-size", "3", "--workers", "0"]
    runs = {"torch": ["--weights", pt, "--img-size", "64", "--device", "cpu"],
            "onnx": ["--onnx", f], "raw": ["--onnx", fr, "--cfg", cfg]}
    m = {}
    for k, args in runs.items():
        rc, so, se = run_script("evaluate.py", *args, *common, "--output-dir", tmp_path / k)
        assert rc == 0, se
        m[k] = json.loads((tmp_path / k / "metrics.json").read_text())
    m["static"] = evaluate_onnx(fs, shapes_data, batch_size=3, workers=0, progress=False)
    ref = m["torch"]
    assert sum(c["n_dets"] for c in ref["per_class"]) > 1000 and ref["map50"] > 0
    for k in ("onnx", "raw", "static"):
        for key in ("map50", "map", "precision", "recall"):
            # a random model's scores tie often: a rounding-level swap of two ranks moves an AP of
            # ~6e-4 by ~1e-5 (seen on the CI machine), so the tolerance is absolute
            assert m[k][key] == pytest.approx(ref[key], rel=1e-6, abs=3e-5), (k, key)
        assert [c["n_dets"] for c in m[k]["per_class"]] == [c["n_dets"] for c in ref["per_class"]]
    rc, _, se = run_script("evaluate.py", "--onnx", f, "--img-size", "96", *common)
    assert rc == 2 and "exported for 64" in se
    rc, _, se = run_script("evaluate.py", "--onnx", fr, *common)
    assert rc == 2 and "--cfg" in se and "Traceback" not in se
