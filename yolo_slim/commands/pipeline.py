"""Run the demo's stages from a recipe into a run folder.

  yolo-slim pipeline [--recipe recipes/demo.json] [--run runs/demo]
                     [--stages data,baseline,sparse,prune,finetune,export,report] [--dry-run]
  yolo-slim pipeline --variables        # every variable, its recipe key and its value now

Each stage runs the command its script always ran (train_sparse.py, prune_channels.py,
distill.py, export.py, python -m yolo_slim...) as a subprocess of $PY (default: this python),
given `--config RECIPE:SECTION` (the stage's section of the recipe holds every default), the
files of the run folder (report/run_layout.py), and each variable (--variables) set (not empty)
in the environment, overriding its recipe key: `make sparse S=0.005` adds --s 0.005. TRAIN_ARGS
is appended to every training stage. A finished stage (its folder's .done) is skipped, an
interrupted training stage (last.pt, no .done) continues with --resume, and every command run,
resumed ones too, is appended to <run>/commands.txt (REPORT.md lists them).

What the recipe leaves to this command: the sparse stage has one target (a speed-up target
drops the FLOPs one; the subgradient step, which never makes a channel exactly dead, neither;
with the speed-up at 0 the section `sparse-flops` when the recipe has it); the prune stage cuts
exactly the dead channels after a sparse target (section `prune`), else removes SHORTCUTS blocks
and then a share of the channels (`prune-layers`), else only the share (`prune-percent`).
Other stages: prune-layers, sensitivity, iterate, unstructured (from the sparse or baseline
model), quantize (the INT8 file again). scripts/pipeline.sh (make demo) and every stage script
run this command. recipes/README.md: the sections and variables.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from yolo_slim.commands.pipeline_plan import DEFAULT_DATA, FILES, VARS, Plan, Step, entry, shown_value
from yolo_slim.core.cli import Parser, add_dataclass_args, parse
from yolo_slim.core.errors import YoloSlimError, cli_main
from yolo_slim.report import run_layout as L

# the stages' tools: the top-level script and its yolo-slim command
TRAIN, PRUNE, PRUNE_LAYERS = ("train_sparse.py", "train"), ("prune_channels.py", "prune"), \
    ("prune_layers.py", "prune-layers")
DISTILL, EXPORT = ("distill.py", "distill"), ("export.py", "export")


def data(p: Plan) -> list[Step]:
    """The built-in synthetic set, unless DATA exists (or names another file: an error)."""
    path = p.file("DATA")
    if os.path.isfile(path):
        p.say(f"data: {path} exists")
        return []
    if path != DEFAULT_DATA:
        raise YoloSlimError(f"DATA={path} not found")
    return [Step([p.py, "-m", "yolo_slim.data.synthetic", "--out", os.path.dirname(DEFAULT_DATA)])]


def baseline(p: Plan) -> list[Step]:
    weights = ["--weights", p.file("WEIGHTS")] if p.set("WEIGHTS") else []
    if p.file("TRANSFER") == "1":  # WEIGHTS are another cfg's: the layers that fit
        weights += ["--transfer", *(["--weights-cfg", p.file("WEIGHTS_CFG")] if p.set("WEIGHTS_CFG") else [])]
    return [Step(p.command(entry(*TRAIN), "baseline", "--cfg", p.file("CFG"), "--data", p.file("DATA"),
                           *weights, "--output-dir", p.run.path(L.BASELINE), extra=p.train_args()))]


def sparse_setup(p: Plan) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(section, variables dropped, flags forced) of the sparse stage: one target at most."""
    if p.value("sparse", "sparsity_update", "prox") == "subgradient":  # never exactly dead
        return "sparse", ("SPARSE_TARGET", "SPARSE_SPEEDUP"), ("--target-flops", "0", "--target-speedup", "0")
    if p.number("sparse", "target_speedup"):
        return "sparse", ("SPARSE_TARGET",), ()  # the speed-up is the target
    return ("sparse-flops" if "sparse-flops" in p.names else "sparse"), (), ()


def sparse_target(p: Plan) -> bool:
    """Whether the sparse stage trains its dead channels to a target."""
    section, skip, forced = sparse_setup(p)
    return not forced and bool(p.number(section, "target_speedup", skip=skip) or
                               p.number(section, "target_flops", skip=skip))


def sparse(p: Plan) -> list[Step]:
    section, skip, forced = sparse_setup(p)
    return [Step(p.command(entry(*TRAIN), section, "--data", p.file("DATA"), "--weights",
                           p.run.path(L.BASELINE, L.BEST), "--output-dir", p.run.path(L.SPARSE),
                           skip=skip, extra=(*forced, *p.train_args())))]


def prune(p: Plan) -> list[Step]:
    """After a sparse target exactly its dead channels (free, counts rounded where the latency
    table says it pays); without one SHORTCUTS blocks then PERCENT of the channels, or only those."""
    if sparse_target(p):
        section, tool = "prune", PRUNE
    elif p.number("prune-layers", "shortcuts") > 0:
        section, tool = "prune-layers", PRUNE_LAYERS
    else:
        section, tool = "prune-percent", PRUNE
    rank = ["--data", p.file("DATA")] if p.value(section, "importance") == "rank" else []  # HRank: DATA's maps
    out = p.run.path(L.PRUNED)
    return [Step(p.command(entry(*tool), section, "--cfg", p.file("CFG"), "--weights",
                           p.run.path(L.SPARSE, L.BEST), *rank, "--output-dir", out), clear=out)]


def prune_layers(p: Plan) -> list[Step]:
    """Layer pruning alone (at least 2 blocks when SHORTCUTS is 0)."""
    none = p.set("SHORTCUTS") is not None and p.number("layers-only", "shortcuts") <= 0
    out = p.run.path(L.PRUNED_LAYERS)
    return [Step(p.command(entry(*PRUNE_LAYERS), "layers-only", "--cfg", p.file("CFG"), "--weights",
                           p.run.path(L.SPARSE, L.BEST), "--output-dir", out,
                           skip=("SHORTCUTS",) if none else (), extra=("--shortcuts", "2") if none else ()),
                 clear=out)]


def finetune(p: Plan) -> list[Step]:
    teacher = [] if p.value("finetune", "kd", "hinton") == "none" else \
        ["--t-weights", p.file("TEACHER"), *(["--t-cfg", p.file("T_CFG")] if p.set("T_CFG") else [])]
    return [Step(p.command(entry(*DISTILL), "finetune", "--cfg", p.one(L.PRUNED, ".cfg"), "--weights",
                           p.one(L.PRUNED, ".weights"), "--data", p.file("DATA"), *teacher,
                           "--output-dir", p.run.path(L.FINETUNE), extra=p.train_args()))]


def export(p: Plan, redo_int8: bool = False) -> list[Step]:
    """FP32 and INT8 files of the fine-tuned model for RUNTIME (default: ONNX for onnxruntime),
    each kept when it exists (INT8 unless redone; ncnn: FP32 only)."""
    cfg, weights = p.one(L.FINETUNE, ".cfg"), p.one(L.FINETUNE, ".weights")
    out, folder = p.run.path(L.EXPORT, os.path.splitext(os.path.basename(cfg))[0]), p.run.path(L.EXPORT)
    files = ("--cfg", cfg, "--weights", weights)
    fmt, suffix, int8 = p.shipped()
    files += ("--format", fmt) if p.set("RUNTIME") else ()
    redo = redo_int8 or p.file("INT8_REDO") == "1"
    steps = [Step(p.command(entry(*EXPORT), "export", *files, "--output", out + suffix),
                  unless=out + suffix, mkdir=folder)]
    if int8:
        steps.append(Step(p.command(entry(*EXPORT), "export-int8", *files, "--output", out + ".int8" + suffix,
                                    "--calib-data", p.file("DATA")),
                          unless=None if redo else out + ".int8" + suffix, mkdir=folder))
    return steps


def report(p: Plan) -> list[Step]:  # REPORT.md reads commands.txt: it is not one of them
    return [Step(p.command(["-m", "yolo_slim.report.pipeline_report"], "report", "--run", p.run.root,
                           "--data", p.file("DATA")), record=False)]


def sensitivity(p: Plan) -> list[Step]:
    """Per-layer cuts for TARGET_FLOPS (or TARGET_SPEEDUP instead), then the cut they choose."""
    out, pruned, weights = (p.run.path(L.SENSITIVITY), p.run.path(L.PRUNED_SENSITIVITY),
                            p.run.path(L.SPARSE, L.BEST))
    files = ("--cfg", p.file("CFG"), "--weights", weights, "--data", p.file("DATA"))
    return [Step(p.command(["-m", "yolo_slim.tools.sensitivity"], "sensitivity", *files, "--output-dir",
                           out, skip=("TARGET_FLOPS",) if p.set("TARGET_SPEEDUP") else ())),
            Step(p.command(entry(*PRUNE), "prune-sensitivity", *files, "--layer-ratios",
                           os.path.join(out, "ratios.json"), "--output-dir", pruned), clear=pruned)]


def train_items(words: Sequence[str]) -> list[str]:
    """TRAIN_ARGS as iterate's --train FIELD=VALUE items: a bare --flag is true, --no-flag false,
    several values comma-joined."""
    out, i = [], 0
    while i < len(words):
        name, vals = words[i].removeprefix("--"), []
        while i + 1 < len(words) and not words[i + 1].startswith("--"):
            i += 1
            vals.append(words[i])
        out.append(f"{name}={','.join(vals)}" if vals else
                   f"{name[3:]}=false" if name.startswith("no-") else f"{name}=true")
        i += 1
    return out


def iterate(p: Plan) -> list[Step]:
    """ROUNDS x (cut, fine-tune); TARGET_SPEEDUP: the whole run's target, the rounds' derived."""
    items = [f"{key}={p.set(n)}" for n, key in (("WORKERS", "workers"), ("DEVICE", "device")) if p.set(n)]
    items += train_items(p.train_args())
    out = p.run.path(L.ITERATE)
    return [Step(p.command(["-m", "yolo_slim.tools.iterate"], "iterate", "--cfg", p.file("CFG"),
                           "--weights", p.run.path(L.SPARSE, L.BEST), "--data", p.file("DATA"),
                           "--output-dir", out,
                           skip=("ROUND_FLOPS", "ROUND_SPEEDUP") if p.set("TARGET_SPEEDUP") else (),
                           extra=tuple(x for it in items for x in ("--train", it))), mkdir=out)]


def unstructured(p: Plan) -> list[Step]:
    # zeroing AMOUNT of the weights removes AMOUNT of the multiply-adds on paper: the structured
    # model that really removes as many keeps 1 - AMOUNT of the FLOPs
    amount = p.set("AMOUNT")
    keep = ("--structured-flops", f"{1 - p.number('unstructured', 'amount'):.6g}") if amount else ()
    return [Step(p.command(["-m", "yolo_slim.tools.unstructured"], "unstructured", "--cfg",
                           p.file("CFG"), "--weights", p.run.path(L.BASELINE, L.BEST),
                           "--output-dir", p.run.path(L.UNSTRUCTURED), extra=keep))]


@dataclass(frozen=True)
class Stage:
    steps: Callable[[Plan], list[Step]]
    folder: str | None = None  # its .done: finished, skipped (None: each step decides)
    training: bool = False     # an interrupted run (its last.pt) continues with --resume


# every stage, in the pipeline's order
STAGES: dict[str, Stage] = {
    "data": Stage(data), "baseline": Stage(baseline, L.BASELINE, True),
    "sparse": Stage(sparse, L.SPARSE, True), "prune": Stage(prune, L.PRUNED),
    "prune-layers": Stage(prune_layers, L.PRUNED_LAYERS),
    "sensitivity": Stage(sensitivity, L.SENSITIVITY), "iterate": Stage(iterate, L.ITERATE),
    "unstructured": Stage(unstructured, L.UNSTRUCTURED),
    "finetune": Stage(finetune, L.FINETUNE, True), "export": Stage(export),
    "quantize": Stage(lambda p: export(p, redo_int8=True)), "report": Stage(report),
}
DEFAULT_STAGES = "data,baseline,sparse,prune,finetune,export,report"


@dataclass
class PipelineFlags:
    """Every flag of yolo-slim pipeline; --recipe and --run default to $RECIPE and $RUN."""
    recipe: str | None = field(default=None, metadata={
        "type": str, "help": "the recipe file, one section per stage (default: $RECIPE, else "
                             "recipes/demo.json)"})
    run: str | None = field(default=None, metadata={
        "type": str, "help": "the run folder (default: $RUN, else runs/demo)"})
    stages: str = field(default=DEFAULT_STAGES, metadata={
        "help": f"comma-separated, run in the pipeline's order; one of {', '.join(STAGES)}"})
    dry_run: bool = field(default=False, metadata={
        "switch": True, "help": "print the commands (and the stages skipped) without running"})
    variables: bool = field(default=False, metadata={
        "switch": True, "help": "print every variable as NAME=VALUE (the environment's, else "
                                "the recipe's or the default) and exit: a shell may eval it"})


def parser() -> Parser:
    p = Parser(description=__doc__)
    add_dataclass_args(p, PipelineFlags)
    return p


def stage_names(text: str) -> list[str]:
    """'sparse,prune' -> the known stages named, in the pipeline's order."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise YoloSlimError(f"--stages: {'unknown stage ' + repr(unknown[0]) if unknown else 'none given'}"
                            f" (the stages: {', '.join(STAGES)})")
    return [s for s in STAGES if s in names]


class StageFailed(Exception):
    def __init__(self, stage: str, argv: Sequence[str], rc: int) -> None:
        super().__init__(f"{stage}: {shlex.join(argv[:3])} ... exited with status {rc}")
        self.rc = rc


def call(argv: list[str]) -> int:
    proc = subprocess.Popen(argv)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the stage too (one process group): it stops as
        proc.wait()            # it does alone (a training keeps its last.pt), then this run
        raise


def run_steps(plan: Plan, name: str, steps: list[Step], dry: bool) -> None:
    """Run (or, dry, print) one stage's steps; record each command run."""
    for step in steps:
        if step.unless and os.path.isfile(step.unless):
            continue
        if dry:
            print(shlex.join(step.argv), flush=True)
            continue
        if step.clear:
            shutil.rmtree(step.clear, ignore_errors=True)
        if step.mkdir:
            os.makedirs(step.mkdir, exist_ok=True)
        if step.record:
            plan.run.record(step.argv)
        rc = call(step.argv)
        if rc:
            raise StageFailed(name, step.argv, rc)


def run_stage(plan: Plan, name: str, dry: bool) -> None:
    """One stage: skipped when its folder is done, resumed when its training was interrupted."""
    stage, folder = STAGES[name], STAGES[name].folder
    if folder and plan.run.done(folder):
        plan.say(f"{name}: already done ({plan.run.path(folder)}); 'make clean-run' to redo")
        return
    steps = stage.steps(plan)
    last = plan.run.interrupted(folder) if stage.training and folder else None
    if last:  # the same command continues the run
        plan.say(f"{name}: resuming the interrupted run in {plan.run.path(folder)}")
        steps[0].argv += ["--resume", last]
    run_steps(plan, name, steps, dry)
    if folder and not dry:
        plan.run.mark_done(folder)


def print_variables(plan: Plan) -> None:
    """NAME=VALUE  # what it sets: the lines a shell can eval (bench scripts, make help)."""
    rows = [("RECIPE", plan.recipe, "the recipe: one section per stage"),
            ("RUN", plan.run.root, "every stage reads and writes under this folder")]
    rows += [(n, plan.file(n), what) for n, (_, what) in FILES.items()]
    rows += [(v.name, shown_value(plan, v), f"{v.where()}: {v.help}".rstrip(": ")) for v in VARS]
    width = max(len(f"{n}={shlex.quote(str(v))}") for n, v, _ in rows)
    for n, v, what in rows:
        print(f"{n}={shlex.quote(str(v)):<{width - len(n) - 1}}  # {what}")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    a = parse(parser(), argv)
    if a is None:  # --help
        return 0
    names = stage_names(a.stages)
    env = dict(os.environ)
    plan = Plan(a.recipe or env.get("RECIPE") or "recipes/demo.json",
                a.run or env.get("RUN") or "runs/demo", env, a.dry_run)
    if a.variables:
        print_variables(plan)
        return 0
    start, many = time.time(), len(names) > 1
    try:
        for name in names:
            if many:
                plan.say(f"=== {name} ({time.time() - start:.0f}s elapsed)")
            run_stage(plan, name, a.dry_run)
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.rc
    if many and not a.dry_run:
        print(f"pipeline finished in {time.time() - start:.0f}s: {plan.run.path(L.REPORT)}")
    return 0
