"""yolo-slim pipeline (commands/pipeline.py): the demo's stages from recipes/demo.json.

The invariant: `make demo` runs the same stage commands as before the pipeline took the stages
over from the shell. FROZEN holds what scripts/*.sh ran before (recorded with PY standing in for
python, all flags spelled out from scripts/common.sh's defaults); each command the pipeline
prints now (`--config recipes/demo.json:SECTION` + files + the variables set) is parsed by its
own tool's parser and must resolve to exactly the options the frozen one resolves to. Then: a
set variable wins over its recipe key, an empty one does not; the cut the prune stage makes; a
finished stage is skipped, an interrupted one resumed and recorded in commands.txt; a failed
command stops the run with its status; bad --stages is one line, exit 2."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from yolo_slim.commands import pipeline
from yolo_slim.commands.main import command_main
from yolo_slim.commands.pipeline_plan import FILES, VARS
from yolo_slim.core.cli import Parser
from yolo_slim.tools.iterate_options import parse_train_overrides

ROOT = Path(__file__).resolve().parents[1]
DEMO_TRAIN = ("--nominal-batch 16 --lr0 0.02 --cls 128 --scale 0.25 --warmup-epochs 1 --mosaic 1.0 "
              "--ema-tau 100 --eval-interval 5")
SPARSE_FLAGS = ("-sr --s {s} --prune 1 --sparsity constant --sparsity-update {update} --sparsity-weight "
                "auto --target-flops {flops} --target-speedup {speedup} --target-recover 0.3 "
                "--target-kill path --target-importance taylor")
DATA = "data/shapes/shapes.data"
# the demo's commands as scripts/*.sh ran them before this command ({run}: the run folder)
FROZEN_DEMO = [
    f"train_sparse.py --cfg cfg/demo.cfg --data {DATA} --epochs 20 --img-size 256 --batch-size 16 "
    f"--workers -1 --output-dir {{run}}/baseline {DEMO_TRAIN}",
    f"train_sparse.py --data {DATA} --weights {{run}}/baseline/best.pt "
    + SPARSE_FLAGS.format(s=0.01, update="prox", flops=0, speedup=3)
    + f" --epochs 5 --img-size 256 --batch-size 16 --workers -1 --output-dir {{run}}/sparse {DEMO_TRAIN}",
    "prune_channels.py --cfg cfg/demo.cfg --weights {run}/sparse/best.pt --strategy slim --dead "
    "--importance bn --latency-report --img-size 256 --output-dir {run}/pruned",
    f"distill.py --cfg {{run}}/pruned/demo.cfg --weights {{run}}/pruned/demo.weights --data {DATA} "
    "--kd chen --t-weights {run}/baseline/best.pt --epochs 6 --img-size 256 --batch-size 16 "
    f"--workers -1 --output-dir {{run}}/finetune {DEMO_TRAIN}",
    "export.py --cfg {run}/finetune/demo.cfg --weights {run}/finetune/demo.weights --format onnx "
    "--img-size 256 --output {run}/export/demo.onnx",
    "export.py --cfg {run}/finetune/demo.cfg --weights {run}/finetune/demo.weights --format onnx "
    f"--img-size 256 --output {{run}}/export/demo.int8.onnx --int8 --calib-data {DATA} "
    "--calib-images 100 --calib-method minmax",
    f"-m yolo_slim.report.pipeline_report --run {{run}} --data {DATA} --img-size 256",
]
SPARSE_FROM = f"train_sparse.py --data {DATA} --weights {{run}}/baseline/best.pt "
SPARSE_TO = f" --epochs 5 --img-size 256 --batch-size 16 --workers -1 --output-dir {{run}}/sparse {DEMO_TRAIN}"
CUT_FROM = "--cfg cfg/demo.cfg --weights {run}/sparse/best.pt"
# (variables set, stages, what the scripts ran before): the decisions the shell made
FROZEN_CASES = [
    ({"SPARSE_SPEEDUP": "0"}, "sparse,prune", [  # the FLOPs target: 0.25 by default
        SPARSE_FROM + SPARSE_FLAGS.format(s=0.01, update="prox", flops=0.25, speedup=0) + SPARSE_TO,
        FROZEN_DEMO[2]]),
    ({"SPARSE_SPEEDUP": "0", "SPARSE_TARGET": "0"}, "sparse,prune", [  # no target: blocks + share
        SPARSE_FROM + SPARSE_FLAGS.format(s=0.01, update="prox", flops=0, speedup=0) + SPARSE_TO,
        f"prune_layers.py {CUT_FROM} --shortcuts 1 --strategy slim --global-percent 0.6 --layer-keep "
        "0.1 --importance bn --latency-report --img-size 256 --output-dir {run}/pruned"]),
    ({"SPARSE_SPEEDUP": "0", "SPARSE_TARGET": "0", "SHORTCUTS": "0", "PERCENT": "0.5"}, "prune", [
        f"prune_channels.py {CUT_FROM} --strategy slim --global-percent 0.5 --layer-keep 0.1 "
        "--importance bn --latency-report --img-size 256 --output-dir {run}/pruned"]),
    ({"SPARSE_UPDATE": "subgradient", "SPARSE_TARGET": "0.5"}, "sparse,prune", [  # never a target
        SPARSE_FROM + SPARSE_FLAGS.format(s=0.01, update="subgradient", flops=0, speedup=0) + SPARSE_TO,
        f"prune_layers.py {CUT_FROM} --shortcuts 1 --strategy slim --global-percent 0.6 --layer-keep "
        "0.1 --importance bn --latency-report --img-size 256 --output-dir {run}/pruned"]),
    ({"SPARSE_TARGET": "0.5"}, "sparse", [FROZEN_DEMO[1]]),  # the speed-up is the one target
    ({"IMPORTANCE": "rank", "LATENCY_REPORT": "0", "STRATEGY": "normal"}, "prune", [
        f"prune_channels.py {CUT_FROM} --strategy normal --dead --importance rank --data {DATA} "
        "--img-size 256 --output-dir {run}/pruned"]),
    ({"KD": "none", "FT_EPOCHS": "2"}, "finetune", [
        f"distill.py --cfg {{run}}/pruned/demo.cfg --weights {{run}}/pruned/demo.weights --data {DATA} "
        "--kd none --epochs 2 --img-size 256 --batch-size 16 --workers -1 --output-dir "
        f"{{run}}/finetune {DEMO_TRAIN}"]),
    ({"TARGET_SPEEDUP": "1.8", "MAX_DROP": "0.1"}, "sensitivity", [
        f"-m yolo_slim.tools.sensitivity {CUT_FROM} --data {DATA} --target-speedup 1.8 --max-drop 0.1 "
        "--strategy slim --importance bn --layer-keep 0.1 --img-size 256 --output-dir {run}/sensitivity",
        f"prune_channels.py {CUT_FROM} --data {DATA} --layer-ratios {{run}}/sensitivity/ratios.json "
        "--strategy slim --importance bn --layer-keep 0.1 --img-size 256 --output-dir "
        "{run}/pruned_sensitivity"]),
    ({"TARGET_SPEEDUP": "2.5", "DEVICE": "cpu", "WORKERS": "0"}, "iterate", [
        f"-m yolo_slim.tools.iterate {CUT_FROM} --data {DATA} --rounds 3 --target-speedup 2.5 "
        "--epochs-per-round 2 --max-drop 0.05 --strategy slim --importance bn --layer-keep 0.1 --kd "
        "chen --img-size 256 --batch-size 16 --train workers=0 --train device=cpu "
        + " ".join(f"--train {k[2:]}={v}" for k, v in zip(*[iter(DEMO_TRAIN.split())] * 2))
        + " --output-dir {run}/iterate"]),
    ({"AMOUNT": "0.3"}, "unstructured", [
        "-m yolo_slim.tools.unstructured --cfg cfg/demo.cfg --weights {run}/baseline/best.pt --amount "
        "0.3 --structured-flops 0.7 --img-size 256 --output-dir {run}/unstructured"]),
    ({"SHORTCUTS": "0"}, "prune-layers", [  # layer pruning alone: at least 2 blocks
        f"prune_layers.py {CUT_FROM} --shortcuts 2 --img-size 256 --output-dir {{run}}/pruned-layers"]),
]
ENTRY = {"train_sparse.py": "train", "prune_channels.py": "prune", "prune_layers.py": "prune-layers",
         "distill.py": "distill", "export.py": "export", "yolo_slim.tools.iterate": "iterate",
         "yolo_slim.tools.sensitivity": "sensitivity", "yolo_slim.tools.unstructured": "unstructured",
         "yolo_slim.report.pipeline_report": "report"}


class Parsed(BaseException):
    def __init__(self, ns):
        super().__init__()
        self.ns = ns


@pytest.fixture
def resolve(monkeypatch):
    """resolve(argv without python) -> (command, options): what the tool's own parser makes of
    the command line, stopped right after the parse (no tool runs)."""
    real, depth = Parser.parse_args, [-1]

    def stop(self, args=None, namespace=None):
        if depth[0] < 0:
            return real(self, args, namespace)
        depth[0] += 1  # iterate's --train items parse inside its parse
        try:
            ns = real(self, args, namespace)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            raise Parsed(ns)
        return ns
    monkeypatch.setattr(Parser, "parse_args", stop)

    def run(argv: list[str]) -> tuple[str, dict]:
        name = ENTRY[argv[1] if argv[0] == "-m" else argv[0]]
        depth[0] = 0
        try:
            with pytest.raises(Parsed) as e:
                command_main(name)(argv[2:] if argv[0] == "-m" else argv[1:])
        finally:
            depth[0] = -1
        opts = {k: v for k, v in vars(e.value.ns).items() if k != "config"}
        if name == "iterate":  # --train items as the training fields they set
            opts["train"] = parse_train_overrides(opts["train"])
        return name, opts
    return run


@pytest.fixture
def clean_env(monkeypatch):
    """No variable of the pipeline set (make's or the caller's); PY a name the tests strip."""
    monkeypatch.chdir(ROOT)
    for name in [v.name for v in VARS] + list(FILES) + ["RUN", "RECIPE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PY", "py")
    return monkeypatch


def dry_run(capsys, run: Path, stages: str) -> list[list[str]]:
    assert pipeline.main(["--dry-run", "--run", str(run), "--stages", stages]) == 0
    out = capsys.readouterr().out
    lines = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert all(argv[0] == "py" for argv in lines), out
    return [argv[1:] for argv in lines]


def frozen(commands: list[str], run: Path) -> list[list[str]]:
    return [shlex.split(c.replace("{run}", str(run))) for c in commands]


def test_the_demo_runs_the_commands_it_ran_before(clean_env, capsys, resolve, tmp_path):
    run = tmp_path / "demo"
    now = dry_run(capsys, run, "baseline,sparse,prune,finetune,export,report")
    assert [argv[argv.index("--config") + 1] for argv in now] == [
        f"recipes/demo.json:{s}" for s in ("baseline", "sparse", "prune", "finetune", "export",
                                           "export-int8", "report")]
    before = frozen(FROZEN_DEMO, run)
    assert len(now) == len(before) == 7
    for new, old in zip(now, before):
        assert resolve(new) == resolve(old), old[:2]


@pytest.mark.parametrize("env, stages, commands", FROZEN_CASES,
                         ids=[" ".join(f"{k}={v}" for k, v in c[0].items()) for c in FROZEN_CASES])
def test_a_variable_and_the_decisions_resolve_as_before(env, stages, commands, clean_env, capsys,
                                                       resolve, tmp_path):
    for k, v in env.items():
        clean_env.setenv(k, v)
    now = dry_run(capsys, tmp_path / "r", stages)
    before = frozen(commands, tmp_path / "r")
    assert len(now) == len(before)
    for new, old in zip(now, before):
        assert resolve(new) == resolve(old), old[:2]


def test_a_set_variable_wins_over_the_recipe_an_empty_one_not(clean_env, capsys, resolve, tmp_path):
    clean_env.setenv("S", "0.005")
    clean_env.setenv("SPARSE_EPOCHS", "")  # make exports an unset variable as ''
    (cmd,) = dry_run(capsys, tmp_path / "r", "sparse")
    assert cmd[cmd.index("--s") + 1] == "0.005" and "--epochs" not in cmd
    _, opts = resolve(cmd)
    assert (opts["s"], opts["epochs"], opts["target_speedup"], opts["lr0"]) == (0.005, 5, 3.0, 0.02)
    clean_env.delenv("S")
    (cmd,) = dry_run(capsys, tmp_path / "r", "sparse")
    assert resolve(cmd)[1]["s"] == 0.01  # recipes/demo.json's


def test_train_args_are_appended_to_the_recipe(clean_env, capsys, resolve, tmp_path):
    """TRAIN_ARGS adds flags to every training stage (last: they win); iterate gets them as
    --train items after the recipe's."""
    clean_env.setenv("TRAIN_ARGS", "--lr0 0.005 --no-ema --lr-steps 0.5 0.8 --seed 3")
    base, _, it, ft = dry_run(capsys, tmp_path / "r", "baseline,sparse,iterate,finetune")
    for cmd in (base, ft):
        _, opts = resolve(cmd)
        assert (opts["lr0"], opts["ema"], opts["lr_steps"], opts["seed"], opts["cls"]) == \
            (0.005, False, [0.5, 0.8], 3, 128.0)
    assert it[-8:] == ["--train", "lr0=0.005", "--train", "ema=false", "--train", "lr-steps=0.5,0.8",
                       "--train", "seed=3"]
    train = resolve(it)[1]["train"]
    assert (train["lr0"], train["ema"], train["seed"], train["cls"], train["workers"]) == \
        (0.005, False, 3, 128.0, -1)


def test_a_finished_stage_is_skipped_and_an_interrupted_one_resumed_and_recorded(clean_env, capsys,
                                                                                  tmp_path):
    """PY=true stands in for the tools (exit 0, nothing written): what the pipeline runs is what
    commands.txt records."""
    run = tmp_path / "r"
    (run / "sparse").mkdir(parents=True)
    (run / "sparse" / "last.pt").write_bytes(b"")
    (run / "baseline").mkdir()
    (run / "baseline" / ".done").touch()
    clean_env.setenv("PY", "true")
    assert pipeline.main(["--run", str(run), "--stages", "baseline,sparse"]) == 0
    out = capsys.readouterr().out
    assert f"baseline: already done ({run}/baseline)" in out
    assert f"sparse: resuming the interrupted run in {run}/sparse" in out
    (line,) = (run / "commands.txt").read_text().splitlines()
    argv = shlex.split(line)
    assert argv[:4] == ["true", "train_sparse.py", "--config", "recipes/demo.json:sparse"]
    assert argv[-2:] == ["--resume", str(run / "sparse" / "last.pt")]
    assert (run / "sparse" / ".done").is_file()
    assert pipeline.main(["--run", str(run), "--stages", "sparse"]) == 0  # done now: nothing runs
    assert "sparse: already done" in capsys.readouterr().out
    assert len((run / "commands.txt").read_text().splitlines()) == 1


def test_a_failed_command_stops_with_its_status(clean_env, capsys, tmp_path):
    clean_env.setenv("PY", "false")
    run = tmp_path / "r"
    assert pipeline.main(["--run", str(run), "--stages", "baseline,sparse"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: baseline: false train_sparse.py --config ... exited with status 1"]
    assert not (run / "baseline" / ".done").exists() and not (run / "sparse").exists()
    assert len((run / "commands.txt").read_text().splitlines()) == 1  # recorded, then run


@pytest.mark.parametrize("argv, message", [
    (["--stages", "baseline,bogus"], "--stages: unknown stage 'bogus' (the stages: " +
     ", ".join(pipeline.STAGES) + ")"),
    (["--stages", ","], f"--stages: none given (the stages: {', '.join(pipeline.STAGES)})"),
    (["--recipe", "no/such.json"], "--recipe: not found: no/such.json"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_one_line(argv, message, clean_env, capsys):
    assert pipeline.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"error: {message}"]


def test_the_data_stage(clean_env, capsys, tmp_path):
    data = tmp_path / "d.data"
    clean_env.setenv("DATA", str(data))
    assert pipeline.main(["--stages", "data", "--run", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: DATA={data} not found\n"
    data.write_text("classes=1\n")
    assert pipeline.main(["--stages", "data", "--run", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"data: {data} exists\n"


def test_variables_eval_in_a_shell(clean_env, tmp_path):
    """--variables: NAME=VALUE lines a shell evals (make help, slim.sh): the set value, else
    the recipe's."""
    env = {**os.environ, "S": "0.005", "RUN": str(tmp_path / "my run")}
    script = ('eval "$(python -m yolo_slim.commands pipeline --variables)"; '
              'echo "$S|$EPOCHS|$IMG|$KD|$LATENCY_REPORT|$SPARSE_TARGET|$TEACHER"')
    p = subprocess.run(["bash", "-c", script.replace("python", shlex.quote(os.sys.executable))],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"0.005|20|256|chen|1|0.25|{tmp_path}/my run/baseline/best.pt"


def test_the_stage_scripts_run_the_pipeline(tmp_path):
    """scripts/sparse.sh is `yolo-slim pipeline --stages sparse`: PY=echo prints the command
    (with the variable set), and the stage is marked done; pipeline.sh --dry-run lists the demo."""
    env = {k: v for k, v in os.environ.items() if k not in {v.name for v in VARS} | set(FILES)}
    env.update(PY="echo", RUN=str(tmp_path / "r"), S="0.005")
    p = subprocess.run(["bash", str(ROOT / "scripts" / "sparse.sh")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    argv = p.stdout.split()
    assert argv[:3] == ["train_sparse.py", "--config", "recipes/demo.json:sparse"]
    assert argv[argv.index("--s") + 1] == "0.005"
    assert (tmp_path / "r" / "sparse" / ".done").is_file()
    p = subprocess.run(["bash", str(ROOT / "scripts" / "pipeline.sh"), "--dry-run"], capture_output=True,
                       text=True, env={**env, "RUN": str(tmp_path / "d")}, timeout=120)
    # the data stage runs only where data/shapes is missing (a fresh clone): not part of this check
    cmds = [line.split()[1] for line in p.stdout.splitlines()
            if not line.startswith("#") and "yolo_slim.data.synthetic" not in line]
    assert p.returncode == 0 and cmds[:6] == ["train_sparse.py", "train_sparse.py", "prune_channels.py",
                                              "distill.py", "export.py", "export.py"], p.stdout


def test_the_report_reads_the_layout_the_pipeline_writes():
    from yolo_slim.report import pipeline_report, run_layout
    assert pipeline_report.STAGES is run_layout.MODEL_STAGES
    folders = {s.folder for s in pipeline.STAGES.values()}
    assert {folder for _, folder, _ in run_layout.MODEL_STAGES} <= folders


@pytest.mark.parametrize("runtime, files", [
    ("openvino", ["demo.xml", "demo.int8.xml"]), ("ncnn", ["demo.ncnn.param"])])
def test_runtime_times_targets_cuts_exports_and_reports_on_that_runtime(runtime, files, clean_env,
                                                                         capsys, resolve, tmp_path):
    """RUNTIME: the sparse target, the cut's table and REPORT are timed on it, and the export
    stage writes its files (ncnn: FP32 only, the project writes no INT8 ncnn)."""
    clean_env.setenv("RUNTIME", runtime)
    run = tmp_path / "r"
    cmds = dry_run(capsys, run, "sparse,prune,finetune,export,report")
    by_tool = {}
    for cmd in cmds:
        name, opts = resolve(cmd)
        by_tool.setdefault(name, []).append(opts)
    assert by_tool["train"][0]["runtime"] == by_tool["prune"][0]["runtime"] == runtime
    assert by_tool["report"][0]["runtime"] == runtime
    assert [o["format"] for o in by_tool["export"]] == [runtime] * len(files)
    assert [os.path.basename(o["output"]) for o in by_tool["export"]] == files
    assert [o["int8"] for o in by_tool["export"]] == [False, True][:len(files)]


def test_an_unknown_runtime_is_one_line(clean_env, capsys, tmp_path):
    clean_env.setenv("RUNTIME", "tensorflow")
    assert pipeline.main(["--dry-run", "--run", str(tmp_path / "r"), "--stages", "export"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RUNTIME=tensorflow: one of onnxruntime, openvino, ncnn" in err[0]
