"""Every detector of the real darknet corpus that builds goes through every stage, as a user
would run them: .weights write + read (exact bytes, exact float count), forward, channel pruning
(verified), a cut of dead channels (compact == the unpruned model, borders included), layer
pruning where the cfg has removable blocks, and ONNX export of the pruned model (onnxruntime
parity). Inputs are the smallest size that keeps every map >= 2x2 (prune/verify.py).

The small and the newly supported cfgs run in the suite; the others (> 20 M floats) with
--runslow.    .venv/bin/python -m tests.test_corpus_stages   # prints the table for all of them
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cfgs import max_abs, raw, tol  # noqa: E402
from netgen import randomize_bn  # noqa: E402
from test_corpus import INDEX, expected_refusal  # noqa: E402
from test_sections import kill_classes  # noqa: E402
from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.nn.weights import load_darknet_weights, save_darknet_weights, weights_float_count  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402
from yolo_slim.prune.channels import PruneOptions, prune_model  # noqa: E402
from yolo_slim.prune.layer_run import prune_layers_model  # noqa: E402
from yolo_slim.prune.layers import analyze_blocks  # noqa: E402
from yolo_slim.prune.verify import verification_size  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet-cfg"
DETECTORS = [e for e in INDEX if expected_refusal(e)[0] == "build"]
NEW = ("yolov3-tiny-prn", "csresnext50-panet-spp", "cspx-p7-mish.cfg", "sam-mish-csp-reorg", "enet-coco")
BIG = 20_000_000  # floats; bigger cfgs take 5-25 s each here and run with --runslow


def run_stages(entry: dict, tmp: str) -> dict:
    path = str(CORPUS / entry["path"])
    torch.manual_seed(0)
    model = Darknet(parse_cfg(path)).eval()
    randomize_bn(model, 1)
    hw = verification_size(model.module_defs)
    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    out: dict = {"size": hw}
    # weights: exactly the index's float count, and a bit-exact round trip
    wpath = os.path.join(tmp, "m.weights")
    save_darknet_weights(model, wpath)
    assert os.path.getsize(wpath) == 20 + 4 * entry["weights_floats"] == 20 + 4 * weights_float_count(model)
    back = Darknet(parse_cfg(path)).eval()
    load_darknet_weights(back, wpath)
    ref = raw(model, x)
    assert all(torch.isfinite(r).all() for r in ref)
    assert max_abs(raw(back, x), ref) == 0.0
    os.remove(wpath)
    del back
    # channel pruning of live channels: compact == folded to float rounding
    res = prune_model(model, PruneOptions(global_percent=0.3, img_size=hw))
    assert res.report["verification"]["max_abs_vs_folded"] <= tol(raw(res.folded, x))
    out["channels"] = res.report["params"]["after"] / res.report["params"]["before"]
    del res
    # layer pruning, where the cfg has removable blocks
    blocks, _ = analyze_blocks(model.module_defs)
    if blocks:
        lres = prune_layers_model(model, min(2, len(blocks)), img_size=hw)
        assert lres.report["verification"]["max_abs_vs_folded"] <= tol(raw(lres.folded, x))
        del lres
    out["blocks"] = len(blocks)
    # dead channels (what proximal sparse training leaves) are cut for free
    kill_classes(model, 0.3)
    res = prune_model(model, PruneOptions(threshold=1e-30, img_size=hw))
    ref = raw(model, x)
    out["dead_gap"] = max_abs(raw(res.compact, x), ref)
    assert out["dead_gap"] <= tol(ref)
    # ONNX of the pruned model, checked against torch in onnxruntime
    from yolo_slim.deploy.export import export_onnx
    rep = export_onnx(res.compact, os.path.join(tmp, "m.onnx"), img_size=list(hw), check_batch=1)
    out["onnx_delta"] = rep["max_abs_delta"]
    return out


def _params():
    for e in DETECTORS:
        marks = [pytest.mark.slow] if e["weights_floats"] > BIG and not any(k in e["path"] for k in NEW) else []
        if e["weights_floats"] > 200_000_000:  # cspx-p7 (1.1 GB of floats): slow in any case
            marks = [pytest.mark.slow]
        yield pytest.param(e, id=e["path"], marks=marks)


@pytest.mark.skipif(not DETECTORS, reason="darknet cfg corpus not found")
@pytest.mark.parametrize("entry", list(_params()))
def test_every_stage(entry, tmp_path):
    run_stages(entry, str(tmp_path))


if __name__ == "__main__":
    torch.set_num_threads(2)
    fails = 0
    for e in DETECTORS:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = run_stages(e, tmp)
                note = (f"ok  {r['size'][0]}px  params after 30% cut {r['channels']:.2f}  "
                        f"blocks {r['blocks']}  dead-cut gap {r['dead_gap']:.2g}  onnx {r['onnx_delta']:.2g}")
            except Exception as ex:  # noqa: BLE001 - a report
                fails += 1
                note = f"FAIL {type(ex).__name__}: {str(ex)[:200]}"
        print(f"{e['path']:55s} {time.time() - t0:6.1f}s  {note}", flush=True)
    print(f"{len(DETECTORS) - fails} of {len(DETECTORS)} detectors pass every stage")
    sys.exit(1 if fails else 0)
