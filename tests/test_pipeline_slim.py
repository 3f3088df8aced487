"""make slim is `yolo-slim pipeline --flow slim` (commands/pipeline_flows.py, recipes/slim.json).

The invariant: `make slim` and `make real` run the commands scripts/slim.sh ran when it held the
recipe and the stages itself. FROZEN_SLIM holds them as slim.sh wrote them (recorded with PY
standing in for python: the sparse and fine-tuning distill.py with SLIM_ARGS spelled out, the
cut, the two exports, the report); each command the flow prints now (`--config
recipes/slim.json:SECTION` + files + the variables set) is parsed by its own tool's parser and
must resolve to exactly the options the frozen one resolves to. Then: a missing CFG, WEIGHTS or
DATA is one line, exit 2; RUNTIME reaches the export's files and the report; the baseline is a
copy of the given files; a resumed stage is recorded; SLIM_ARGS and TRAIN_ARGS add to the recipe."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from test_pipeline_command import ROOT, clean_env, resolve  # noqa: F401  (fixtures)
from yolo_slim.commands import pipeline
from yolo_slim.commands.pipeline_flows import SLIM_VARS

SLIM_TRAIN = ("--lr0 0.001 --warmup-epochs 0 --batch-size 8 --nominal-batch 8 --anchor-t 1 --iou-obj 0 "
              "--freeze-bn --clip-grad 10")
TEACHER = "--t-cfg {cfg} --t-weights {weights} --kd hinton --labels {labels}"
# scripts/slim.sh's commands before the pipeline ran them ({...}: the case's files and choices)
FROZEN_SLIM = [
    f"distill.py --cfg {{cfg}} --weights {{weights}} {TEACHER} -sr --sparsity-update prox {{target}} "
    "--target-kill path --target-importance taylor --sparsity-weight {weight} --target-recover 0.4 "
    "--epochs {epochs} --data {data} --img-size {img} --workers -1 --seed 0 --output-dir {run}/sparse "
    + SLIM_TRAIN,
    "prune_channels.py --cfg {cfg} --weights {run}/sparse/best.pt --dead --latency-report --img-size {img} "
    "--output-dir {run}/pruned",
    f"distill.py --cfg {{run}}/pruned/{{stem}}.cfg --weights {{run}}/pruned/{{stem}}.weights {TEACHER} "
    "--epochs 4 --data {data} --img-size {img} --workers -1 --seed 0 --output-dir {run}/finetune "
    + SLIM_TRAIN,
    "export.py --cfg {run}/finetune/{stem}.cfg --weights {run}/finetune/{stem}.weights --format onnx "
    "--img-size {img} --output {run}/export/{stem}.onnx",
    "export.py --cfg {run}/finetune/{stem}.cfg --weights {run}/finetune/{stem}.weights --format onnx "
    "--img-size {img} --output {run}/export/{stem}.int8.onnx --int8 --calib-data {data} --calib-images 100 "
    "--calib-method minmax",
    "-m yolo_slim.report.pipeline_report --run {run} --data {data} --img-size {img}{reference}",
]
DEFAULT = {"target": "--target-flops 0.5", "weight": "flops", "epochs": "8", "labels": "files",
           "reference": ""}
LABEL_FREE = {"labels": "teacher", "reference": " --reference-cfg {cfg} --reference {weights}"}
# (variables set, what differs from DEFAULT in the frozen commands, sparse section)
CASES = [
    ({}, {}, "sparse-flops"),
    ({"LABELS": "teacher"}, LABEL_FREE, "sparse-flops"),
    ({"SPARSE_SPEEDUP": "2"}, {"target": "--target-speedup 2", "weight": "latency"}, "sparse"),
    ({"SPARSE_TARGET": "0.3", "SPARSE_EPOCHS": "3"}, {"target": "--target-flops 0.3", "epochs": "3"},
     "sparse-flops"),
]


@pytest.fixture
def slim_env(clean_env, tmp_path):
    """clean_env without the slim flow's own variables either; the given model (the repo's
    yolov3-tiny.cfg, a weights file) and a .data file under tmp_path, set as make slim's."""
    for v in SLIM_VARS:
        clean_env.delenv(v.name, raising=False)
    files = {"cfg": "cfg/yolov3-tiny.cfg", "weights": tmp_path / "yolov3-tiny.weights",
             "data": tmp_path / "my.data"}
    files["weights"].write_bytes(b"\x00\x01weights")
    files["data"].write_text("classes=80\n")
    for name, path in files.items():
        clean_env.setenv(name.upper(), str(path))
    return {k: str(v) for k, v in files.items()}


def slim_dry_run(capsys, run: Path, *args: str) -> list[list[str]]:
    """The commands the slim flow runs (PY's, without it); the baseline's copies left out."""
    assert pipeline.main(["--flow", "slim", "--dry-run", "--run", str(run), *args]) == 0
    out = capsys.readouterr().out
    lines = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert all(argv[0] in ("py", "cp") for argv in lines), out
    return [argv[1:] for argv in lines if argv[0] == "py"]


def frozen(fields: dict[str, str], files: dict[str, str], run: Path, img: int) -> list[list[str]]:
    stem = os.path.splitext(os.path.basename(files["cfg"]))[0]
    values = {**DEFAULT, **fields, **files, "run": str(run), "img": str(img), "stem": stem}
    values["reference"] = values["reference"].format(**values)
    return [shlex.split(c.format(**values)) for c in FROZEN_SLIM]


def assert_same_options(now: list[list[str]], before: list[list[str]], resolve) -> None:
    assert len(now) == len(before) == 6
    for new, old in zip(now, before):
        assert resolve(new) == resolve(old), old[:2]


@pytest.mark.parametrize("env, fields, section", CASES,
                         ids=[" ".join(f"{k}={v}" for k, v in c[0].items()) or "default" for c in CASES])
def test_make_slim_runs_the_commands_it_ran_before(env, fields, section, slim_env, clean_env, capsys,
                                                   resolve, tmp_path):
    for k, v in env.items():
        clean_env.setenv(k, v)
    now = slim_dry_run(capsys, tmp_path / "run")
    assert [argv[argv.index("--config") + 1] for argv in now] == [
        f"recipes/slim.json:{s}" for s in (section, "prune", "finetune", "export", "export-int8", "report")]
    assert_same_options(now, frozen(fields, slim_env, tmp_path / "run", 416), resolve)


def test_img_is_the_cfgs_own_width_unless_set(slim_env, clean_env, capsys, resolve, tmp_path):
    """IMG unset: the cfg's [net] width (320 here) in every command, as slim.sh's awk read it."""
    cfg = tmp_path / "m320.cfg"
    cfg.write_text((ROOT / "cfg" / "yolov3-tiny.cfg").read_text().replace("width=416", "width=320"))
    clean_env.setenv("CFG", str(cfg))
    now = slim_dry_run(capsys, tmp_path / "run")
    assert_same_options(now, frozen({}, {**slim_env, "cfg": str(cfg)}, tmp_path / "run", 320), resolve)
    clean_env.setenv("IMG", "256")
    sizes = [resolve(c)[1]["img_size"] for c in slim_dry_run(capsys, tmp_path / "run")]
    assert len(sizes) == 6 and all(s in (256, [256]) for s in sizes), sizes  # a list: export's --img-size H W


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_real_runs_the_commands_it_ran_before(slim_env, clean_env, resolve, tmp_path):
    """make real's own line (make -n prints it, nothing runs) through scripts/slim.sh --dry-run,
    on a stand-in of the real-assets cache: the label-free commands slim.sh ran."""
    cache = tmp_path / "cache"
    files = {"cfg": cache / "coco-tiny" / "yolov3-tiny.cfg", "weights": cache / "coco-tiny" /
             "yolov3-tiny.weights", "data": cache / "vtest" / "vtest.data"}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "cfg" / "yolov3-tiny.cfg", files["cfg"])
    files["weights"].write_bytes(b"w")
    files["data"].write_text("classes=80\n")
    for name in ("CFG", "WEIGHTS", "DATA"):
        clean_env.delenv(name)
    clean_env.setenv("YOLO_SLIM_CACHE", str(cache))
    clean_env.setenv("RUN", str(tmp_path / "real"))
    # under `make test` this make is a sub-make: it would print "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    made = subprocess.run(["make", "--no-print-directory", "-n", "real"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env=env)
    line = made.stdout.replace("\\\n", " ").splitlines()[-1]
    assert line.endswith("bash scripts/slim.sh") and "LABELS=teacher" in line, made.stdout
    p = subprocess.run(["bash", "-c", line + " --dry-run"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ), timeout=120)
    assert p.returncode == 0, p.stderr
    now = [shlex.split(x)[1:] for x in p.stdout.splitlines() if x.startswith("py ")]
    before = frozen(LABEL_FREE, {k: str(v) for k, v in files.items()}, tmp_path / "real", 416)
    assert_same_options(now, before, resolve)


@pytest.mark.parametrize("unset, message", [
    ("CFG", "make slim needs CFG=<the model's darknet cfg> (got '')"),
    ("WEIGHTS", "make slim needs WEIGHTS=<the pretrained .weights or .pt> (got '')"),
    ("DATA", "make slim needs DATA=<a darknet .data file> (got 'data/shapes/shapes.data')"),
])
def test_a_missing_input_is_one_line(unset, message, slim_env, clean_env, capsys, tmp_path, monkeypatch):
    clean_env.delenv(unset)
    if unset == "DATA":  # unset, DATA is the synthetic set: here a folder where it is not
        monkeypatch.chdir(tmp_path)
        os.symlink(ROOT / "recipes", tmp_path / "recipes")
        clean_env.setenv("CFG", str(ROOT / "cfg" / "yolov3-tiny.cfg"))
    assert pipeline.main(["--flow", "slim", "--run", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"error: {message}"]
    assert not (tmp_path / "r").exists()


def test_the_script_is_one_line_exit_2_too(slim_env, tmp_path):
    env = {**os.environ, "PY": "echo", "RUN": str(tmp_path / "r"), "WEIGHTS": str(tmp_path / "none.weights")}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "slim.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    message = f"make slim needs WEIGHTS=<the pretrained .weights or .pt> (got '{tmp_path}/none.weights')"
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"error: {message}\n")


def test_runtime_openvino_exports_its_files_and_reports_on_it(slim_env, clean_env, capsys, resolve,
                                                              tmp_path):
    """RUNTIME=openvino: the export stage writes .xml and .int8.xml, the report (and the sparse
    target, the cut's table) on openvino."""
    clean_env.setenv("RUNTIME", "openvino")
    by_tool: dict[str, list[dict]] = {}
    for cmd in slim_dry_run(capsys, tmp_path / "r"):
        name, opts = resolve(cmd)
        by_tool.setdefault(name, []).append(opts)
    assert [(o["format"], o["int8"], os.path.basename(o["output"])) for o in by_tool["export"]] == [
        ("openvino", False, "yolov3-tiny.xml"), ("openvino", True, "yolov3-tiny.int8.xml")]
    assert [o["runtime"] for o in by_tool["report"] + by_tool["prune"]] == ["openvino"] * 2
    assert [o["runtime"] for o in by_tool["distill"]] == ["openvino", "onnxruntime"]  # the sparse stage's


def test_the_baseline_is_a_copy_and_a_resumed_stage_is_recorded(slim_env, clean_env, capsys, tmp_path):
    """PY=true stands in for the tools: the baseline is the given files, byte for byte, not
    recorded (no tool ran); the interrupted sparse training continues with --resume, recorded."""
    run = tmp_path / "r"
    (run / "sparse").mkdir(parents=True)
    (run / "sparse" / "last.pt").write_bytes(b"")
    clean_env.setenv("PY", "true")
    assert pipeline.main(["--flow", "slim", "--run", str(run), "--stages", "baseline,sparse"]) == 0
    assert f"sparse: resuming the interrupted run in {run}/sparse" in capsys.readouterr().out
    assert (run / "baseline" / "yolov3-tiny.weights").read_bytes() == b"\x00\x01weights"
    given = (ROOT / "cfg" / "yolov3-tiny.cfg").read_bytes()
    assert (run / "baseline" / "yolov3-tiny.cfg").read_bytes() == given
    (line,) = (run / "commands.txt").read_text().splitlines()
    argv = shlex.split(line)
    assert argv[:4] == ["true", "distill.py", "--config", "recipes/slim.json:sparse-flops"]
    assert argv[-2:] == ["--resume", str(run / "sparse" / "last.pt")]
    assert (run / "sparse" / ".done").is_file() and not (run / "baseline" / ".done").exists()
    (run / "baseline" / "yolov3-tiny.weights").write_bytes(b"kept")  # there: not copied again
    assert pipeline.main(["--flow", "slim", "--run", str(run), "--stages", "baseline,sparse"]) == 0
    assert "sparse: already done" in capsys.readouterr().out
    assert (run / "baseline" / "yolov3-tiny.weights").read_bytes() == b"kept"
    assert len((run / "commands.txt").read_text().splitlines()) == 1


def test_slim_args_and_train_args_add_to_the_recipe(slim_env, clean_env, capsys, resolve, tmp_path):
    """SLIM_ARGS (after TRAIN_ARGS) is appended to both training commands: it overrides the
    recipe's keys and keeps the rest (before the recipe it replaced every flag of it)."""
    clean_env.setenv("TRAIN_ARGS", "--lr0 0.003 --ema-tau 50")
    clean_env.setenv("SLIM_ARGS", "--lr0 0.002 --seed 5")
    sparse, _, finetune = slim_dry_run(capsys, tmp_path / "r", "--stages", "sparse,prune,finetune")
    for cmd in (sparse, finetune):
        o = resolve(cmd)[1]
        assert (o["lr0"], o["seed"], o["ema_tau"], o["freeze_bn"], o["clip_grad"], o["batch_size"]) == \
            (0.002, 5, 50.0, True, 10.0, 8)


def test_the_slim_flows_variables_and_stages(slim_env, clean_env, capsys, tmp_path):
    """--variables: the slim recipe's values (the ones the default run resolves to), IMG from the
    cfg; --stages names slim's own stages."""
    clean_env.setenv("SEED", "2")
    assert pipeline.main(["--flow", "slim", "--variables"]) == 0
    shown = dict(line.split("  #")[0].strip().split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert {k: shown[k] for k in ("RECIPE", "RUN", "IMG", "SPARSE_EPOCHS", "FT_EPOCHS", "SPARSE_TARGET",
                                  "SPARSE_SPEEDUP", "SPARSE_WEIGHT", "SPARSE_RECOVER", "KD", "LABELS",
                                  "SEED", "CALIB_IMAGES")} == {
        "RECIPE": "recipes/slim.json", "RUN": "runs/slim", "IMG": "416", "SPARSE_EPOCHS": "8",
        "FT_EPOCHS": "4", "SPARSE_TARGET": "0.5", "SPARSE_SPEEDUP": "0.0", "SPARSE_WEIGHT": "flops",
        "SPARSE_RECOVER": "0.4", "KD": "hinton", "LABELS": "files", "SEED": "2", "CALIB_IMAGES": "100"}
    assert pipeline.main(["--flow", "slim", "--stages", "data", "--run", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("error: --stages: unknown stage 'data' (the stages: baseline, "
                                       "sparse, prune, finetune, export, report)\n")
