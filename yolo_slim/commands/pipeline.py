"""Run a flow's stages (the demo's, or make slim's) from a recipe into a run folder.

  yolo-slim pipeline [--flow demo] [--recipe recipes/demo.json] [--run runs/demo]
                     [--stages data,baseline,sparse,prune,finetune,export,report] [--dry-run]
  yolo-slim pipeline --flow slim        # make slim: CFG, WEIGHTS, DATA from the environment
  yolo-slim pipeline --variables        # every variable, its recipe key and its value now

Each stage runs the command its script always ran (train_sparse.py, prune_channels.py,
distill.py, export.py, python -m yolo_slim...) as a subprocess of $PY (default: this python),
given `--config RECIPE:SECTION` (the stage's section of the recipe holds every default), the
files of the run folder (report/run_layout.py), and each variable (--variables) set (not empty)
in the environment, overriding its recipe key: `make sparse S=0.005` adds --s 0.005. TRAIN_ARGS
is appended to every training stage. A finished stage (its folder's .done) is skipped, an
interrupted training stage (last.pt, no .done) continues with --resume, and every command run,
resumed ones too, is appended to <run>/commands.txt (REPORT.md lists them).

The flows and their stages are commands/pipeline_flows.py's: `demo` (make demo, every stage
script) and `slim` (make slim, make real: a pretrained model is the baseline and the teacher,
recipes/slim.json into runs/slim). What the recipe leaves to this command: the sparse stage has
one target (a speed-up target drops the FLOPs one; the subgradient step, which never makes a
channel exactly dead, neither; with the speed-up at 0 the section `sparse-flops` when the recipe
has it); the demo's prune stage cuts exactly the dead channels after a sparse target (section
`prune`), else removes SHORTCUTS blocks and then a share of the channels (`prune-layers`), else
only the share (`prune-percent`); slim's always cuts the dead ones. recipes/README.md: the
sections and variables.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from yolo_slim.commands.pipeline_flows import FLOWS, STAGES, Flow
from yolo_slim.commands.pipeline_plan import FILES, Plan, Step, shown_value, with_vars
from yolo_slim.core.cli import Parser, add_dataclass_args, parse
from yolo_slim.core.errors import YoloSlimError, cli_main
from yolo_slim.report import run_layout as L


@dataclass
class PipelineFlags:
    """Every flag of yolo-slim pipeline; --recipe and --run default to $RECIPE and $RUN, then
    to the flow's."""
    flow: str = field(default="demo", metadata={
        "choices": tuple(FLOWS), "help": "demo: the demo's stages (make demo); slim: a pretrained "
                                         "model CFG + WEIGHTS slimmed on DATA (make slim)"})
    recipe: str | None = field(default=None, metadata={
        "type": str, "help": "the recipe file, one section per stage (default: $RECIPE, else the "
                             "flow's: recipes/demo.json, recipes/slim.json)"})
    run: str | None = field(default=None, metadata={
        "type": str, "help": "the run folder (default: $RUN, else the flow's: runs/demo, runs/slim)"})
    stages: str | None = field(default=None, metadata={
        "type": str, "help": f"comma-separated, run in the flow's order; the demo's: "
                             f"{', '.join(STAGES)} (default: {FLOWS['demo'].default}); slim's "
                             f"(default: all): {', '.join(FLOWS['slim'].stages)}"})
    dry_run: bool = field(default=False, metadata={
        "switch": True, "help": "print the commands (and the stages skipped) without running"})
    variables: bool = field(default=False, metadata={
        "switch": True, "help": "print every variable as NAME=VALUE (the environment's, else "
                                "the recipe's or the default) and exit: a shell may eval it"})


def parser() -> Parser:
    p = Parser(description=__doc__)
    add_dataclass_args(p, PipelineFlags)
    return p


def stage_names(text: str, flow: Flow) -> list[str]:
    """'sparse,prune' -> the flow's stages named, in its order."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in flow.stages]
    if unknown or not names:
        raise YoloSlimError(f"--stages: {'unknown stage ' + repr(unknown[0]) if unknown else 'none given'}"
                            f" (the stages: {', '.join(flow.stages)})")
    return [s for s in flow.stages if s in names]


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


def run_stage(plan: Plan, flow: Flow, name: str, dry: bool) -> None:
    """One stage: skipped when its folder is done, resumed when its training was interrupted."""
    stage, folder = flow.stages[name], flow.stages[name].folder
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
    rows += [(v.name, shown_value(plan, v), f"{v.where()}: {v.help}".rstrip(": ")) for v in plan.vars]
    width = max(len(f"{n}={shlex.quote(str(v))}") for n, v, _ in rows)
    for n, v, what in rows:
        print(f"{n}={shlex.quote(str(v)):<{width - len(n) - 1}}  # {what}")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    a = parse(parser(), argv)
    if a is None:  # --help
        return 0
    flow = FLOWS[a.flow]
    names = stage_names(a.stages or flow.default, flow)
    env = dict(os.environ)
    env.update(flow.derive(env))
    plan = Plan(a.recipe or env.get("RECIPE") or flow.recipe, a.run or env.get("RUN") or flow.run,
                env, a.dry_run, with_vars(flow.variables))
    if a.variables:
        print_variables(plan)
        return 0
    flow.check(plan)
    start, many = time.time(), len(names) > 1
    try:
        for name in names:
            if many:
                plan.say(f"=== {name} ({time.time() - start:.0f}s elapsed)")
            run_stage(plan, flow, name, a.dry_run)
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.rc
    if many and not a.dry_run:
        print(f"pipeline finished in {time.time() - start:.0f}s: {plan.run.path(L.REPORT)}")
    return 0
