"""Runtimes behind one interface (deploy/backends.py): names, files and refusals; the latency table
measured on each runtime through that runtime's own path (its one-conv runner, its export of
the whole model, the runner of its file) with an injected clock, and cached per runtime; the
measured latency of a cut timed on the table's runtime; --runtime checked when parsed."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cfgs import TINY_RESIDUAL  # noqa: E402
from netgen import random_model  # noqa: E402

from yolo_slim.analysis.latency import TABLE_RUNTIMES, LatencyTable, measure_table  # noqa: E402
from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.darknet.cfg import parse_cfg  # noqa: E402
from yolo_slim.deploy import backends, ort_bench, ort_latency  # noqa: E402
from yolo_slim.tools import latency as tl  # noqa: E402

RUNTIMES = ["onnxruntime", "openvino", "ncnn"]
HW = (64, 64)


def need(name: str):
    """The backend module of `name`, or a skip that says why it cannot run here."""
    try:
        return backends.backend(name)
    except ModuleNotFoundError as e:
        pytest.skip(f"{name}: its backend module is not in this checkout ({e})")
    except YoloSlimError as e:
        pytest.skip(str(e))


def clock_ms(shape) -> float:
    """The injected clock: ms of a run on an input of `shape` (a stand-in for time)."""
    return 0.01 + 1e-6 * float(np.prod(shape))


def test_names_files_and_refusals():
    assert backends.NAMES == TABLE_RUNTIMES  # the prune/train flags list them below deploy/
    with pytest.raises(YoloSlimError, match="^--runtime must be one of onnxruntime, openvino, "
                                            "ncnn, onnxruntime-cpu, got bogus$"):
        backends.backend("bogus")
    assert backends.backend("onnxruntime-cpu").NAME == "onnxruntime"
    assert backends.shipped_files("d/m.onnx") == ["d/m.onnx"]
    with pytest.raises(YoloSlimError, match="not a shipped model"):
        backends.backend_for_file("m.tflite")
    with pytest.raises(YoloSlimError, match="INT8 export exists for onnxruntime, openvino, not ncnn"):
        backends.int8_export("ncnn")
    need("openvino")
    assert backends.backend_for_file("d/m.xml").NAME == "openvino"
    assert backends.shipped_files("d/m.xml") == ["d/m.xml", "d/m.bin"]


@pytest.fixture
def clock(monkeypatch) -> dict[str, list]:
    """Every timing replaced by the clock, after the runtime really ran once: ConvTimer runs
    each conv runner on zeros, time_rounds loads each exported file with its backend's runner
    (ort_bench.file_runner) and runs it. Records what ran."""
    ran: dict[str, list] = {"convs": [], "files": []}

    def time_conv(self, run, shape):
        outs = run(np.zeros(shape, np.float32))
        ran["convs"].append((tuple(shape), [np.asarray(o).shape for o in outs]))
        return clock_ms(shape)

    def time_rounds(paths, img_hw, batch=1, rounds=50, warmup=5, threads=None, runtime=None):
        out = {}
        for k, p in paths.items():
            y = ort_bench.file_runner(p, threads, runtime)(np.zeros((batch, 3, *img_hw), np.float32))
            ran["files"].append((os.path.splitext(p)[1], [np.asarray(o).ndim for o in y]))
            out[k] = [5.0] * rounds
        return out
    monkeypatch.setattr(ort_latency.ConvTimer, "_time", time_conv)
    monkeypatch.setattr(ort_bench, "time_rounds", time_rounds)
    return ran


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_table_per_runtime_through_its_own_path(runtime, clock, tmp_path, monkeypatch):
    b = need(runtime)
    monkeypatch.setenv("YOLO_SLIM_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "net.cfg"
    cfg.write_text(TINY_RESIDUAL)
    path = tl.ensure_table(str(cfg), HW, runtime=runtime, threads=1, log=lambda s: None, align=8)
    t = LatencyTable.load(path)
    name = tl.table_runtime(runtime)  # onnxruntime is cached under onnxruntime-cpu, as always
    assert t.meta["runtime"] == name and f"_b1_{name}_t1_" in os.path.basename(path)
    assert t.meta["precision"] == "f32" and t.full_ms == 5.0
    assert t.meta["machine"].get(runtime, b.version()) == b.version()
    # the whole model and the floor model (the calibration's second point): exported to the
    # runtime's format, loaded by its backend, run
    assert [f for f, _ in clock["files"]] == [b.SUFFIX] * 2
    # every grid point ran as a conv in the runtime: a 4-D map out of every [1, cin, h, w] in
    empty = (1, 3, 32, 32) if runtime == "onnxruntime" else (1, 1, 1, 1)  # Identity / 1x1 conv
    convs = [c for c in clock["convs"] if c[0] != empty]
    assert len(convs) >= len(t.entries) and all(len(s) == 4 for _, outs in convs for s in outs)
    # and the numbers are the clock's, as measure_table makes them from any timer
    want = measure_table(parse_cfg(str(cfg)), HW, lambda spec, ci, co: clock_ms((1, ci, *spec["in_hw"])),
                         align=8, overhead_ms=clock_ms(empty), full_ms=5.0,
                         narrow=runtime == "ncnn")  # only ncnn packs fewer channels than its block
    assert t.entries == want.entries and t.calib == want.calib
    assert t.meta["narrow"] is (runtime == "ncnn")
    # cached per runtime: asked again, nothing runs
    monkeypatch.setattr(ort_latency.ConvTimer, "_time", lambda *a: pytest.fail("measured again"))
    assert tl.ensure_table(str(cfg), HW, runtime=runtime, threads=1, log=lambda s: None, align=8) == path


def test_cache_key_per_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_SLIM_CACHE", str(tmp_path))
    cfg = tmp_path / "net.cfg"
    cfg.write_text(TINY_RESIDUAL)
    key = lambda rt: tl.table_path(str(cfg), HW, 1, rt, 2, 4, 8, "min")  # noqa: E731
    assert key("onnxruntime") == key("onnxruntime-cpu")  # a table cached before runtimes: reused
    need("openvino")
    assert len({key("onnxruntime"), key("openvino"), key("onnxruntime-cuda")}) == 3
    assert "openvino" in tl.machine("openvino") and "openvino" not in tl.machine("onnxruntime")


def test_a_cut_is_timed_on_the_tables_runtime(tmp_path, monkeypatch):
    """tools/latency's measure hooks: the table's runtime, batch and threads (the pruning
    scripts' --latency-threads wins), whatever --runtime says once a table is given."""
    seen = []

    def models_latency(models, hw, batch, threads, rounds, ref=None, runtime="?"):
        seen.append((runtime, batch, threads))
        return {k: {"median_ms": 1.0, "ratio_median": 1.0} for k in models}
    monkeypatch.setattr(tl, "models_latency", models_latency)
    m = random_model(1, TINY_RESIDUAL)
    table = str(tmp_path / "t.json")
    measure_table(m.module_defs, HW, lambda s, ci, co: 1.0, batch=2,
                  meta={"runtime": "openvino", "threads": 3}).save(table)
    assert tl.table_measure_hook(table)({"a": m}, HW)["runtime"] == "openvino"
    a = argparse.Namespace(target_speedup=2.0, latency_table=table, latency_threads=1,
                           runtime="onnxruntime", img_size=None, cfg=None, weights=None)
    _, measure, path = tl.for_script(a, None)
    assert path == table and measure({"a": m}, HW)["runtime"] == "openvino"
    assert tl.measure_hook()({"a": m}, HW)["runtime"] == "onnxruntime-cpu"
    assert seen == [("openvino", 2, 3), ("openvino", 2, 1), ("onnxruntime-cpu", 1, 2)]


def test_bogus_runtime_is_one_line_exit_2(tmp_path, run_script, capsys):
    cfg = tmp_path / "net.cfg"
    cfg.write_text(TINY_RESIDUAL)
    assert tl.main(["--cfg", str(cfg), "--runtime", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--runtime" in err and "bogus" in err
    for script in ("prune_channels.py", "train_sparse.py"):
        rc, _, se = run_script(script, "--cfg", cfg, "--runtime", "bogus")
        assert rc == 2 and len(se.strip().splitlines()) == 1 and "bogus" in se, (script, se)
