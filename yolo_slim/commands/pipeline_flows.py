"""The stages of `yolo-slim pipeline` and the flows that order them (commands/pipeline.py runs
them). A stage turns a Plan (the recipe, the run folder, the variables) into the commands it
runs; a flow names its stages in their order, its recipe and run folder, its own variables, the
input it needs and the defaults that input decides:

  demo  make demo and the stage scripts (make sparse, ...): the synthetic data, a baseline
        trained from scratch, sparse training, the cut, fine-tuning with KD, export, report, and
        the tools beyond one-shot slimming; recipes/demo.json into runs/demo
  slim  make slim, make real: a model darknet trained (CFG, WEIGHTS) is the baseline (copied into
        <run>/baseline, no training) and the teacher of distill.py's sparse training and
        fine-tuning; the free cut of the dead channels; export, report (LABELS=teacher: scored as
        agreement with WEIGHTS); recipes/slim.json into runs/slim, IMG the cfg's own width
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from yolo_slim.commands.pipeline_plan import DEFAULT_DATA, SPARSE, Plan, Step, Var, entry
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.darknet.cfg import net_size, parse_cfg
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
    return cut(p, section, tool)


def cut(p: Plan, section: str, tool: tuple[str, str]) -> list[Step]:
    """The prune stage's command: the sparse model cut as the section says."""
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


def report(p: Plan, *reference: str) -> list[Step]:  # REPORT.md reads commands.txt: it is not one of them
    return [Step(p.command(["-m", "yolo_slim.report.pipeline_report"], "report", "--run", p.run.root,
                           "--data", p.file("DATA"), *reference), record=False)]


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


# make slim: the given model is the baseline and the teacher
def copy_baseline(p: Plan) -> list[Step]:
    """The given model as it is (REPORT.md's first row): CFG and WEIGHTS copied into
    <run>/baseline under the cfg's name, each unless it is there."""
    cfg, weights, folder = p.file("CFG"), p.file("WEIGHTS"), p.run.path(L.BASELINE)
    stem = os.path.splitext(os.path.basename(cfg))[0]
    return [Step(["cp", src, dst], record=False, unless=dst, mkdir=folder)
            for src, dst in ((cfg, os.path.join(folder, stem + ".cfg")),
                             (weights, os.path.join(folder, stem + os.path.splitext(weights)[1])))]


def teacher_args(p: Plan) -> tuple[str, ...]:
    return ("--t-cfg", p.file("CFG"), "--t-weights", p.file("WEIGHTS"))


def slim_args(p: Plan) -> tuple[str, ...]:
    """TRAIN_ARGS, then SLIM_ARGS: both appended to the slim flow's training commands."""
    return (*p.train_args(), *shlex.split(p.file("SLIM_ARGS")))


def distill_sparse(p: Plan) -> list[Step]:
    """Sparse training of the given model with its own KD terms, to one target (sparse_setup)."""
    section, skip, forced = sparse_setup(p)
    return [Step(p.command(entry(*DISTILL), section, "--cfg", p.file("CFG"), "--weights", p.file("WEIGHTS"),
                           *teacher_args(p), "--data", p.file("DATA"), "--output-dir", p.run.path(L.SPARSE),
                           skip=skip, extra=(*forced, *slim_args(p))))]


def distill_pruned(p: Plan) -> list[Step]:
    """Fine-tuning of the cut model with the same teacher."""
    return [Step(p.command(entry(*DISTILL), "finetune", "--cfg", p.one(L.PRUNED, ".cfg"), "--weights",
                           p.one(L.PRUNED, ".weights"), *teacher_args(p), "--data", p.file("DATA"),
                           "--output-dir", p.run.path(L.FINETUNE), extra=slim_args(p)))]


def report_agreement(p: Plan) -> list[Step]:
    """REPORT.md; trained on the teacher's detections, every score is agreement with them."""
    label_free = p.value("finetune", "labels", "files") == "teacher"
    return report(p, *(("--reference-cfg", p.file("CFG"), "--reference", p.file("WEIGHTS"))
                       if label_free else ()))


def need_model(p: Plan) -> None:
    """CFG and WEIGHTS given, DATA (default: the synthetic set) there: else one line."""
    for name, what in (("CFG", "the model's darknet cfg"), ("WEIGHTS", "the pretrained .weights or .pt"),
                       ("DATA", "a darknet .data file")):
        path = p.file(name) if name == "DATA" else p.set(name) or ""
        if not os.path.isfile(path):
            raise YoloSlimError(f"make slim needs {name}=<{what}> (got '{path}')")


def cfg_width(env: Mapping[str, str]) -> dict[str, str]:
    """IMG unset: the cfg's own [net] width (the size the model was trained at)."""
    cfg = env.get("CFG")
    if env.get("IMG") or not cfg or not os.path.isfile(cfg):
        return {}
    return {"IMG": str(net_size(parse_cfg(cfg, warn=False))[1])}


# the slim flow's stages read the teacher's keys too; LABELS and SEED are its own
TEACHER_SECTIONS = SPARSE + ("finetune",)
SLIM_VARS = (
    Var("KD", "kd", TEACHER_SECTIONS, "none | hinton | chen"),
    Var("LABELS", "labels", TEACHER_SECTIONS, "files | teacher: the teacher's detections are the "
        "targets, every score agreement with WEIGHTS"),
    Var("SEED", "seed", TEACHER_SECTIONS),
)
SLIM_STAGES: dict[str, Stage] = {
    "baseline": Stage(copy_baseline), "sparse": Stage(distill_sparse, L.SPARSE, True),
    "prune": Stage(lambda p: cut(p, "prune", PRUNE), L.PRUNED),
    "finetune": Stage(distill_pruned, L.FINETUNE, True), "export": Stage(export),
    "report": Stage(report_agreement),
}


@dataclass(frozen=True)
class Flow:
    """What one `--flow` runs: its stages (in their order) and what it brings to the Plan."""
    stages: Mapping[str, Stage]
    default: str                    # --stages when not given
    recipe: str                     # --recipe's default (after $RECIPE)
    run: str                        # --run's default (after $RUN)
    variables: tuple[Var, ...] = ()  # its own, or other sections for a variable of VARS
    check: Callable[[Plan], None] = lambda p: None  # the input it needs, before any stage
    derive: Callable[[Mapping[str, str]], dict[str, str]] = lambda env: {}  # unset variables' values


FLOWS = {
    "demo": Flow(STAGES, DEFAULT_STAGES, "recipes/demo.json", "runs/demo"),
    "slim": Flow(SLIM_STAGES, ",".join(SLIM_STAGES), "recipes/slim.json", "runs/slim", SLIM_VARS,
                 need_model, cfg_width),
}
