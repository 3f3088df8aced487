"""Unstructured magnitude pruning: exactly round(P x total) conv weights zeroed, the smallest ones,
the written .weights hold those zeros, gzip shrinks it, and the report carries latencies."""
from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import random_model, write_random_net  # noqa: E402

from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.nn.model import Darknet, conv_layers  # noqa: E402
from yolo_slim.tools.unstructured import magnitude_prune, run  # noqa: E402
from yolo_slim.nn.weights import load_darknet_weights  # noqa: E402


def conv_weights(m: Darknet) -> torch.Tensor:
    return torch.cat([c.conv.weight.detach().flatten() for _, c in conv_layers(m)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_exact_sparsity_smallest_weights(seed, amount):
    m = random_model(seed)
    before = conv_weights(m).clone()
    rep = magnitude_prune(m, amount)
    after = conv_weights(m)
    total = before.numel()
    k = math.floor(amount * total + 0.5)
    assert rep["total"] == total and rep["requested_zeros"] == k
    assert int((after == 0).sum()) == rep["zeros"] == k  # random init: no zeros before
    assert rep["sparsity"] == k / total
    zeroed = after == 0
    assert torch.equal(after[~zeroed], before[~zeroed])  # survivors untouched
    if 0 < k < total:
        assert float(before[zeroed].abs().max()) <= float(before[~zeroed].abs().min())
    assert sum(v["zeros"] for v in rep["per_layer"].values()) == k
    # parametrisation removed: plain Parameters again, nothing left behind by torch's pruning
    for _, c in conv_layers(m):
        assert not hasattr(c.conv, "weight_orig") and not hasattr(c.conv, "weight_mask")
        assert isinstance(c.conv.weight, torch.nn.Parameter)


def test_bad_amount():
    with pytest.raises(YoloSlimError):
        magnitude_prune(random_model(0), 1.5)


def test_run_files_sizes_and_latency(tmp_path):
    cfg, wts, m = write_random_net(tmp_path, 2)
    out = tmp_path / "u"
    rep = run(str(cfg), str(tmp_path / "n.weights"), str(out), 0.5, structured_flops=0.5,
              runs=2, warmup=1, onnx=True, log=lambda *a: None)
    back = Darknet(parse_cfg(str(out / "n.cfg"))).eval()
    load_darknet_weights(back, str(out / "n.weights"))
    w = conv_weights(back)
    assert int((w == 0).sum()) == math.floor(0.5 * w.numel() + 0.5) == rep["sparsity"]["zeros"]
    data = (out / "n.weights").read_bytes()
    assert struct.unpack("<iiiq", data[:20]) == (0, 2, 5, 0)
    assert len(data) == (tmp_path / "n.weights").stat().st_size  # same cfg, same size
    z = rep["size_bytes"]
    assert z["unstructured"] == z["dense"] and z["unstructured_gzip"] < 0.8 * z["dense_gzip"]
    lat = rep["latency"]
    assert set(lat) == {"dense", "unstructured_0.5", "structured_flops_0.5"}
    assert lat["unstructured_0.5"]["flops"] == lat["dense"]["flops"]
    assert lat["structured_flops_0.5"]["flops"] <= 0.5 * lat["dense"]["flops"]
    for v in lat.values():
        assert v["torch_ms"] > 0 and v["onnxruntime_ms"] > 0
    saved = json.loads((out / "unstructured_report.json").read_text())
    assert saved["sparsity"]["zeros"] == rep["sparsity"]["zeros"]
    # the pruned model still runs and differs from the dense one
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        d = max(float((a - b).abs().max()) for a, b in zip(back.forward_raw(x), m.forward_raw(x)))
    assert np.isfinite(d) and d > 0


def test_cli(tmp_path, run_script):
    cfg, wts, m = write_random_net(tmp_path, 1)
    from yolo_slim.tools.unstructured import main
    args = ["--cfg", str(cfg), "--weights", str(tmp_path / "n.weights")]
    assert main(args + ["--output-dir", str(tmp_path / "a"), "--amount", "-0.1"]) == 2
    assert main(args + ["--output-dir", str(tmp_path / "b"), "--amount", "0.4", "--runs", "1",
                        "--warmup", "0", "--no-onnx", "--structured-flops", "0"]) == 0
    rep = json.loads((tmp_path / "b" / "unstructured_report.json").read_text())
    assert set(rep["latency"]) == {"dense", "unstructured_0.4"}
