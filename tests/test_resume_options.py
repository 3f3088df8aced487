"""A changed option is refused where it would change a run that is resumed, whether the flag
or a --config recipe changes it: train (--resume), distill (--resume; its --kd, --temperature
and teacher are in opt.json, restored and guarded like every training flag) and iterate (the
same command again in the same --output-dir). Each refusal is one line naming the option."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from yolo_slim.commands.main import command_main
from yolo_slim.darknet.cfg import parse_cfg
from yolo_slim.nn.model import Darknet
from yolo_slim.nn.weights import save_checkpoint
from yolo_slim.tools.iterate import IterateOptions
from yolo_slim.train.config import DistillTrainConfig, TrainConfig, resume_config

ROOT = Path(__file__).resolve().parents[1]


def last_pt(tmp_path: Path, cfg) -> str:
    """A run's last.pt whose opt is `cfg` (what --resume reads first)."""
    run = Path(cfg.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    model = Darknet(parse_cfg(str(ROOT / "cfg" / "demo.cfg"), warn=False))
    save_checkpoint(model, str(run / "last.pt"), opt=dataclasses.asdict(cfg))
    return str(run / "last.pt")


def refused(name: str, argv: list[str], capsys) -> str:
    rc = command_main(name)(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, out, err)
    return lines[0]


def recipe(tmp_path: Path, obj: dict) -> str:
    (tmp_path / "recipe.json").write_text(json.dumps(obj))
    return str(tmp_path / "recipe.json")


def test_train_refuses_a_changed_flag_or_recipe_key(tmp_path, capsys):
    last = last_pt(tmp_path, TrainConfig(data="d.data", output_dir=str(tmp_path / "run"), epochs=3,
                                         lr0=0.02))
    assert "--epochs 10 (the run has 3)" in refused("train", ["--resume", last, "--epochs", "10"], capsys)
    line = refused("train", ["--resume", last, "--config", recipe(tmp_path, {"lr0": 0.03})], capsys)
    assert line.startswith("error: --resume keeps the settings it was started with; "
                           "--lr0 0.03 (the run has 0.02) would change them")


@pytest.mark.parametrize("argv, expect", [
    (["--kd", "hinton"], "--kd hinton (the run has chen)"),
    (["--temperature", "3"], "--temperature 3.0 (the run has 2.5)"),
    (["--kd-weight", "0.5"], "--kd-weight 0.5 (the run has 1.0)"),
    (["--t-weights", "other.pt"], "--t-weights other.pt (the run has teacher.pt)"),
    (["--config", "{recipe}"], "--margin 0.2 (the run has 0.0)"),
])
def test_distill_refuses_a_changed_kd_option(argv, expect, tmp_path, capsys):
    last = last_pt(tmp_path, DistillTrainConfig(data="d.data", output_dir=str(tmp_path / "run"),
                                                epochs=3, kd="chen", temperature=2.5,
                                                t_weights="teacher.pt"))
    argv = [a.format(recipe=recipe(tmp_path, {"margin": 0.2})) for a in argv]
    line = refused("distill", ["--resume", last, "--data", "d.data", *argv], capsys)
    assert line.startswith("error: --resume keeps the settings") and expect in line, line


def test_distill_resume_restores_the_kd_options(tmp_path):
    last = last_pt(tmp_path, DistillTrainConfig(data="d.data", output_dir=str(tmp_path / "run"),
                                                kd="chen", temperature=2.5, kd_weight=0.7,
                                                box_weight=0.2, margin=0.1, t_cfg="t.cfg",
                                                t_weights="teacher.pt"))
    saved, path = resume_config(DistillTrainConfig(resume=last, device="cpu"))
    assert path == last and isinstance(saved, DistillTrainConfig)
    assert (saved.kd, saved.temperature, saved.kd_weight, saved.box_weight, saved.margin,
            saved.t_cfg, saved.t_weights, saved.device) == \
        ("chen", 2.5, 0.7, 0.2, 0.1, "t.cfg", "teacher.pt", "cpu")
    # a run saved before the KD options were in opt.json: they come from the command line
    old = last_pt(tmp_path, TrainConfig(data="d.data", output_dir=str(tmp_path / "old")))
    saved, _ = resume_config(DistillTrainConfig(resume=old, kd="none", temperature=4.0))
    assert (saved.kd, saved.temperature, saved.data) == ("none", 4.0, "d.data")


def iterate_run(tmp_path: Path, **options) -> tuple[list[str], str]:
    """An iterate output folder with its iterate.json, and the command that started it."""
    out = tmp_path / "iter"
    out.mkdir()
    files = {"cfg": "c.cfg", "weights": "w.weights", "data": "d.data"}
    opts = IterateOptions(**options)
    (out / "iterate.json").write_text(json.dumps({**files, "options": dataclasses.asdict(opts)}))
    argv = [x for k, v in files.items() for x in (f"--{k}", v)] + ["--output-dir", str(out)]
    return argv, str(out)


def test_iterate_refuses_changed_options_and_names_them(tmp_path, capsys):
    argv, out = iterate_run(tmp_path, layer_keep=0.1, kd="chen", train={"lr0": 0.002})
    base = argv + ["--layer-keep", "0.1", "--kd", "chen", "--train", "lr0=0.002"]
    assert refused("iterate", base + ["--layer-keep", "0.2"], capsys) == \
        f"error: {out} holds an iterative run with other inputs or options (--layer-keep 0.2 " \
        "(the run has 0.1)); resume it with the same ones, or use a new --output-dir"
    line = refused("iterate", argv + ["--config", recipe(tmp_path, {
        "layer_keep": 0.1, "kd": "hinton", "train": {"lr0": 0.003}})], capsys)
    assert "--kd hinton (the run has chen)" in line and "--train lr0=0.003 (the run has 0.002)" in line
    line = refused("iterate", base + ["--weights", "other.weights"], capsys)
    assert "--weights other.weights (the run has w.weights)" in line
