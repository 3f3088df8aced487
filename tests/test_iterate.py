"""Iterative pruning: rounds shrink FLOPs by the per-round factor, every round's files stay, early
stop on --max-drop, and a run interrupted mid fine-tune resumes (completed rounds skipped, the
fine-tune continued from last.pt) to the same weights as an uninterrupted run."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netgen import randomize_bn  # noqa: E402

from yolo_slim.train import engine  # noqa: E402
from yolo_slim.darknet.cfg import parse_cfg_text  # noqa: E402
from yolo_slim.core.errors import YoloSlimError  # noqa: E402
from yolo_slim.tools.iterate import IterateOptions, parse_train_overrides, run  # noqa: E402
from yolo_slim.nn.model import Darknet  # noqa: E402
from yolo_slim.nn.weights import read_checkpoint, save_darknet_weights  # noqa: E402
from cfgs import TINY_RESIDUAL as TINY  # noqa: E402

TRAIN = {"workers": 0, "device": "cpu", "nominal_batch": 4, "ema": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shapes_data):
    root, data = tmp_path_factory.mktemp("iter"), shapes_data
    cfg = root / "tiny.cfg"
    cfg.write_text(TINY)
    torch.manual_seed(0)
    m = Darknet(parse_cfg_text(TINY))
    randomize_bn(m, 7)
    save_darknet_weights(m, str(root / "tiny.weights"))
    return root, str(cfg), str(root / "tiny.weights"), data


def opts(**kw) -> IterateOptions:
    base = dict(rounds=2, per_round_flops=0.8, epochs_per_round=2, max_drop=1.0, batch_size=4,
                eval_images=4, train=dict(TRAIN))
    return IterateOptions(**{**base, **kw})


class Interrupt(engine.TrainHooks):
    """Raises at the end of the n-th epoch overall (before that epoch's checkpoint)."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def epoch_end(self, epoch, model):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt
        return {}


def epochs_of(run_dir: str) -> list[int]:
    with open(os.path.join(run_dir, "results.csv")) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_rounds_resume_after_interruption(setup, monkeypatch):
    root, cfg, wts, data = setup
    ref = run(cfg, wts, data, str(root / "ref"), opts(), log=lambda *a: None)
    assert [r["round"] for r in ref["rounds"]] == [1, 2] and ref["stopped"] is None
    f1, f2 = (r["flops_fraction"] for r in ref["rounds"])
    assert f1 <= 0.8 and f2 <= 0.8 * f1 + 1e-12  # each round cuts the current model
    for k in (1, 2):
        rd = root / "ref" / f"round_{k}"
        assert {"tiny.cfg", "tiny.weights", "prune_report.json"} <= set(os.listdir(rd / "prune"))
        assert {"last.pt", "tiny.cfg", "tiny.weights"} <= set(os.listdir(rd / "train"))
        assert epochs_of(str(rd / "train")) == [0, 1]

    out = str(root / "int")
    with pytest.raises(KeyboardInterrupt):  # dies at the end of round 2's second epoch
        run(cfg, wts, data, out, opts(), log=lambda *a: None, hooks=[Interrupt(4)])
    assert os.path.isfile(os.path.join(out, "round_1", "round.json"))
    assert not os.path.isfile(os.path.join(out, "round_2", "round.json"))
    assert read_checkpoint(os.path.join(out, "round_2", "train", "last.pt"))["epoch"] == 0
    r1_mtime = os.path.getmtime(os.path.join(out, "round_1", "round.json"))

    calls = []
    real = engine.train

    def counting(cfg_t, model, hooks=()):
        calls.append((cfg_t.output_dir, cfg_t.resume))
        return real(cfg_t, model, hooks)
    monkeypatch.setattr(engine, "train", counting)
    res = run(cfg, wts, data, out, opts(), log=lambda *a: None)
    assert calls == [(os.path.join(out, "round_2", "train"),
                      os.path.join(out, "round_2", "train", "last.pt"))]
    assert os.path.getmtime(os.path.join(out, "round_1", "round.json")) == r1_mtime
    assert epochs_of(os.path.join(out, "round_2", "train")) == [0, 1]
    a = read_checkpoint(os.path.join(out, "round_2", "train", "last.pt"))["model"]
    b = read_checkpoint(str(root / "ref" / "round_2" / "train" / "last.pt"))["model"]
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) == 0.0
    assert res["rounds"][1]["map50"] == pytest.approx(ref["rounds"][1]["map50"], abs=1e-12)
    # a third run does nothing at all
    calls.clear()
    run(cfg, wts, data, out, opts(), log=lambda *a: None)
    assert calls == []
    with pytest.raises(YoloSlimError, match="other inputs or options"):
        run(cfg, wts, data, out, opts(rounds=3), log=lambda *a: None)


def test_early_stop_keeps_files(setup):
    root, cfg, wts, data = setup
    # a negative --max-drop: any round "drops too much", so the loop stops after round 1
    res = run(cfg, wts, data, str(root / "stop"), opts(max_drop=-1.0, epochs_per_round=1),
              log=lambda *a: None)
    assert len(res["rounds"]) == 1 and "max-drop" in res["stopped"]
    assert res["best_within_drop"] is None
    summary = json.loads((root / "stop" / "summary.json").read_text())
    assert summary["rounds"][0]["round"] == 1
    assert os.path.isfile(res["rounds"][0]["weights"])
    assert not (root / "stop" / "round_2").exists()


def test_train_overrides():
    assert parse_train_overrides(["lr0=0.002", "workers=0", "ema=false", "lr-steps=0.5,0.7"]) == \
        {"lr0": 0.002, "workers": 0, "ema": False, "lr_steps": [0.5, 0.7]}
    for bad in (["nope=1"], ["lr0"], ["epochs=3"], ["workers=x"], ["ema=maybe"],
                ["img-size=64"], ["batch_size=2"], ["progress=true"]):
        with pytest.raises(YoloSlimError):
            parse_train_overrides(bad)


def test_cli_errors_and_script(setup, repo_root):
    import subprocess
    root, cfg, wts, data = setup
    from yolo_slim.tools.iterate import main
    assert main(["--cfg", cfg, "--weights", wts, "--data", data, "--output-dir",
                 str(root / "e"), "--per-round-flops", "1.5"]) == 2
    assert main(["--cfg", cfg, "--weights", wts, "--data", data, "--output-dir",
                 str(root / "e"), "--train", "bogus=1"]) == 2
    # a bad option is an error before any work, not an "early stop" with exit 0
    assert main(["--cfg", cfg, "--weights", wts, "--data", data, "--output-dir",
                 str(root / "e2"), "--layer-keep", "2"]) == 2
    assert not (root / "e2" / "summary.json").exists()
    p = subprocess.run([str(repo_root / "scripts" / "iterate.sh"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "--per-round-flops" in p.stdout


def test_script_defaults_pass_train_args(tmp_path, repo_root, monkeypatch):
    """Without arguments the script runs `yolo-slim pipeline --stages iterate`: the recipe's
    section iterate (recipes/demo.json) with the variables set; TRAIN_ARGS become --train
    FIELD=VALUE pairs after the recipe's (PY=echo prints the command it would run)."""
    import os
    import subprocess
    from yolo_slim.tools.iterate_options import parser
    env = {**os.environ, "PY": "echo", "RUN": str(tmp_path / "run"), "ROUNDS": "2",
           "TRAIN_ARGS": "--lr0 0.02 --multi-scale --no-ema --lr-steps 0.5 0.8 --mosaic 1.0"}
    env.pop("TARGET_SPEEDUP", None)
    p = subprocess.run(["bash", str(repo_root / "scripts" / "iterate.sh")], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    args = p.stdout.split()
    assert args[:2] == ["-m", "yolo_slim.tools.iterate"] and args[args.index("--rounds") + 1] == "2"
    assert args[args.index("--config") + 1] == "recipes/demo.json:iterate"
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--train"]
    assert pairs == ["lr0=0.02", "multi-scale=true", "ema=false", "lr-steps=0.5,0.8", "mosaic=1.0"]
    assert parse_train_overrides(pairs) == {"lr0": 0.02, "multi_scale": True, "ema": False,
                                            "lr_steps": [0.5, 0.8], "mosaic": 1.0}
    assert args[args.index("--weights") + 1] == str(tmp_path / "run" / "sparse" / "best.pt")
    assert (tmp_path / "run" / "iterate" / ".done").is_file()
    monkeypatch.chdir(repo_root)  # the recipe's path is the repo's
    ns = parser().parse_args(args[2:])
    train = parse_train_overrides(ns.train)  # the recipe's training, then TRAIN_ARGS
    assert (train["workers"], train["cls"], train["multi_scale"], train["ema"]) == (-1, 128.0, True, False)
    assert (ns.rounds, ns.per_round_flops, ns.target_speedup) == (2, 0.8, 0.0)
    # TARGET_SPEEDUP: the whole run's target instead of the per-round cut (never both)
    p = subprocess.run(["bash", str(repo_root / "scripts" / "iterate.sh")], capture_output=True, text=True,
                       env={**env, "RUN": str(tmp_path / "run2"), "TARGET_SPEEDUP": "2.5"}, timeout=60)
    args = p.stdout.split()
    assert p.returncode == 0 and args[args.index("--target-speedup") + 1] == "2.5"
    assert "--per-round-flops" not in args and "--per-round-speedup" not in args


def speed_setup(root, cfg: str, monkeypatch, current_ms: float | None = None) -> tuple[str, Any]:
    """A fake latency table of the tiny cfg (saved, path returned) and a fake runtime in place of
    tools/latency.measure_hook: every model runs at the table's prediction, ratios to the first
    model timed (as models_latency reports them); `current_ms`: iterate's fine-tuned model
    ("current") is timed at that instead."""
    from yolo_slim.analysis.latency import measure_table
    from yolo_slim.darknet.cfg import parse_cfg
    from yolo_slim.tools import latency as tl

    def timer(spec, cin, cout):
        h, w = spec["in_hw"]
        return 0.01 + 1e-5 * h * w * spec["size"] ** 2 * cin * cout / (spec["stride_y"] * spec["stride_x"])
    table = measure_table(parse_cfg(cfg), (64, 64), timer, full_ms=2.0)
    path = str(root / "table.json")
    table.save(path)

    def fake_hook(*a, **k):
        def measure(models, hw):
            t = {n: table.predict(m.module_defs)["total_ms"] for n, m in models.items()}
            if current_ms is not None and "current" in t:
                t["current"] = current_ms
            ref = t[next(iter(t))]
            return {"models": {n: {"median_ms": v, "ratio_median": v / ref} for n, v in t.items()}}
        return measure
    monkeypatch.setattr(tl, "measure_hook", fake_hook)
    return path, table


def round_latency(out, k: int) -> dict:
    with open(out / f"round_{k}" / "prune" / "prune_report.json") as f:
        return json.load(f)["latency"]


def test_per_round_speedup_cuts_the_current_model(setup, monkeypatch):
    """--per-round-speedup X: each round asks the latency table for X times faster than the
    model it starts from (not than the original), and each round's prune report holds the
    closed loop's measurements (faked here: the runtime = the table's prediction)."""
    root, cfg, wts, data = setup
    path, _ = speed_setup(root, cfg, monkeypatch)
    res = run(cfg, wts, data, str(root / "speed"), opts(per_round_speedup=1.25, latency_table=path,
                                                        epochs_per_round=1, img_size=64), log=lambda *a: None)
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    speedups = []
    for k in (1, 2):
        lat = round_latency(root / "speed", k)
        assert abs(lat["closed_loop"]["measured_error"]) <= 0.05
        speedups.append(lat["measured_before_ms"] / lat["measured_ms"])
    assert speedups == pytest.approx([1.25, 1.25], rel=0.05)  # each round from its own start
    with pytest.raises(YoloSlimError, match="per-round-speedup"):
        run(cfg, wts, data, str(root / "bad"), opts(per_round_speedup=0.5), log=lambda *a: None)


def test_target_speedup_derives_the_rounds(setup, monkeypatch):
    """--target-speedup 1.69 over 2 rounds: round 1 asks 1.69 ** (1/2) = 1.3, round 2 what is
    still missing (1.69 / measured so far), and the run ends at 1.69x measured."""
    root, cfg, wts, data = setup
    path, table = speed_setup(root, cfg, monkeypatch)
    out = root / "whole"
    res = run(cfg, wts, data, str(out), opts(target_speedup=1.69, latency_table=path, epochs_per_round=1,
                                             img_size=64),
              log=lambda *a: None)
    assert [r["round"] for r in res["rounds"]] == [1, 2] and res["stopped"] is None
    assert res["baseline"]["latency"] == {"ms": pytest.approx(2.0), "speedup": 1.0,
                                          "remaining": pytest.approx(1.69)}
    r1, r2 = (r["latency"] for r in res["rounds"])
    assert r1["round_speedup"] == pytest.approx(1.3, rel=1e-12)
    assert r2["round_speedup"] == pytest.approx(1.69 / r1["speedup"], rel=1e-12)
    assert r1["speedup"] == pytest.approx(1.3, rel=0.05) and r2["round_speedup"] == pytest.approx(1.3, rel=0.06)
    for k, r in ((1, r1), (2, r2)):  # what each round's pruning was asked, and what it measured
        with open(out / f"round_{k}" / "prune" / "prune_report.json") as f:
            rep = json.load(f)
        assert rep["options"]["target_speedup"] == r["round_speedup"]
        lat = rep["latency"]
        assert lat["measured_before_ms"] / lat["measured_ms"] == pytest.approx(r["round_speedup"], rel=0.05)
    assert r2["ms"] == pytest.approx(table.predict(parse_cfg_text(open(res["rounds"][1]["cfg"]).read()))["total_ms"])
    assert res["target"]["speedup"] == pytest.approx(1.69, rel=0.05) and res["target"]["flag"] == "--target-speedup"


def test_target_latency_stops_when_met(setup, monkeypatch):
    """--target-latency MS: round 1 asks (measured ms / MS) ** (1 / rounds); once the fine-tuned
    model is measured at or under MS (faked: 0.5 ms) the loop stops, whatever rounds are left."""
    root, cfg, wts, data = setup
    path, _ = speed_setup(root, cfg, monkeypatch, current_ms=0.5)
    res = run(cfg, wts, data, str(root / "met"), opts(rounds=3, target_latency=1.0, latency_table=path,
                                                      epochs_per_round=1, img_size=64), log=lambda *a: None)
    assert len(res["rounds"]) == 1 and not (root / "met" / "round_2").exists()
    assert res["rounds"][0]["latency"]["round_speedup"] == pytest.approx(2.0 ** (1 / 3), rel=1e-9)
    assert res["rounds"][0]["latency"]["ms"] == 0.5 and res["rounds"][0]["latency"]["remaining"] == 0.5
    assert res["stopped"] == "--target-latency met by round 1: 0.500 ms measured, 4.000x the original"
    assert res["target"]["met"] is True
    # the input model already under the target: nothing to do
    res = run(cfg, wts, data, str(root / "met0"), opts(target_latency=3.0, latency_table=path, img_size=64),
              log=lambda *a: None)
    assert res["rounds"] == [] and res["stopped"].startswith("--target-latency met by the input model: 2.000 ms")


def test_whole_run_target_refused_beside_per_round(setup, capsys):
    """One clear line, exit 2, before any work: a whole-run target derives the per-round cut."""
    from yolo_slim.tools.iterate import main
    root, cfg, wts, data = setup
    base = ["--cfg", cfg, "--weights", wts, "--data", data, "--output-dir", str(root / "both")]
    for extra, flag in ((["--per-round-flops", "0.8"], "--per-round-flops"),
                        (["--per-round-speedup", "1.5"], "--per-round-speedup")):
        capsys.readouterr()
        assert main(base + ["--target-speedup", "4"] + extra) == 2
        err = capsys.readouterr().err
        assert err == f"error: --target-speedup derives each round's speed-up: give it without {flag}\n"
    assert main(base + ["--target-speedup", "4", "--target-latency", "3"]) == 2
    assert "not both" in capsys.readouterr().err
    with pytest.raises(YoloSlimError, match="--target-latency derives .* without --per-round-flops"):
        run(cfg, wts, data, str(root / "both"), opts(target_latency=3.0, per_round_flops=0.5))
    with pytest.raises(YoloSlimError, match="--target-speedup must be > 1"):
        run(cfg, wts, data, str(root / "both"), opts(target_speedup=0.5))
    assert not (root / "both").exists()
