"""What the commands of `yolo-slim pipeline`'s stages are made of (commands/pipeline_flows.py holds the
stages): the recipe's sections, the run folder, and the variables of make and the stage scripts.

A command is the stage's entry point, `--config RECIPE:SECTION`, the files it reads and writes
(report/run_layout.py's folders), then a flag for each variable of VARS that is set (not empty)
and names the section: the variable overrides the recipe key, the recipe holds the default.
Where the recipe cannot decide (which section, which cut, one target) the stage decides here,
from the values the commands resolve to: the environment's, else the recipe's.
"""
from __future__ import annotations

import glob
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from yolo_slim.core import recipe
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.report import run_layout as L

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA = "data/shapes/shapes.data"  # the synthetic set: the data stage writes it

# the files the stages read (not recipe keys): NAME -> (default, what it is)
FILES: dict[str, tuple[str, str]] = {
    "CFG": ("cfg/demo.cfg", "the model to slim"),
    "DATA": (DEFAULT_DATA, "darknet .data file (default: the synthetic set, the data stage)"),
    "WEIGHTS": ("", "optional pretrained start for the baseline"),
    "TRANSFER": ("0", "1: WEIGHTS are for another cfg: load the layers that fit"),
    "WEIGHTS_CFG": ("", "with TRANSFER=1: the cfg WEIGHTS were written for"),
    "TEACHER": ("", "distillation teacher (.pt or .weights; default: the baseline's best.pt)"),
    "T_CFG": ("", "teacher cfg, not needed for a .pt teacher"),
    "TRAIN_ARGS": ("", "extra flags appended to every training stage's command"),
    "SLIM_ARGS": ("", "make slim: more flags appended to its training commands (after TRAIN_ARGS)"),
    "INT8_REDO": ("0", "1: the export stage writes the INT8 file again (make quantize)"),
}

TRAINING = ("baseline", "sparse", "sparse-flops", "finetune")
SPARSE = ("sparse", "sparse-flops")
CUTS = ("prune", "prune-percent", "prune-layers")        # the prune stage's three cuts
SHARES = ("prune-percent", "prune-layers")
KEEPS = SHARES + ("sensitivity", "prune-sensitivity", "iterate")
MASKS = CUTS + ("sensitivity", "prune-sensitivity", "iterate")
# the export stage's files per RUNTIME: (--format, file suffix, INT8 export available)
SHIPPED = {"onnxruntime": ("onnx", ".onnx", True), "openvino": ("openvino", ".xml", True),
           "ncnn": ("ncnn", ".ncnn.param", False)}


@dataclass(frozen=True)
class Var:
    """A variable of make and the stage scripts: set, it overrides `key` in these sections."""
    name: str
    key: str
    sections: tuple[str, ...]  # () = every stage's
    help: str = ""
    switch: bool = False       # 1/0 -> --key / --no-key

    def where(self) -> str:
        return f"{'|'.join(self.sections) or 'every stage'}.{self.key}"

    def flag(self, value: str) -> list[str]:
        name = "--" + self.key.replace("_", "-")
        if self.switch:
            return [name if value not in ("0", "false") else "--no-" + name[2:]]
        return [name, value]


VARS = (
    Var("IMG", "img_size", ()),
    Var("BATCH", "batch_size", TRAINING + ("iterate",)),
    Var("WORKERS", "workers", TRAINING, "loader processes, -1 = auto (iterate: --train)"),
    Var("DEVICE", "device", TRAINING, "'' = auto (cuda if available), cpu, cuda:0 (iterate: --train)"),
    Var("EPOCHS", "epochs", ("baseline",)),
    Var("SPARSE_EPOCHS", "epochs", SPARSE),
    Var("FT_EPOCHS", "epochs", ("finetune",)),
    Var("S", "s", SPARSE, "sparsity rate"),
    Var("PRUNE", "prune", SPARSE, "0: no conv that meets a shortcut, 1: all"),
    Var("SPARSITY", "sparsity", SPARSE, "constant | global-decay | local-decay"),
    Var("SPARSE_UPDATE", "sparsity_update", SPARSE, "prox | subgradient (no target then)"),
    Var("SPARSE_WEIGHT", "sparsity_weight", SPARSE[::-1], "uniform | flops | latency | auto"),
    Var("SPARSE_SPEEDUP", "target_speedup", SPARSE, "X times faster on ORT CPU; 0: sparse-flops"),
    Var("SPARSE_TARGET", "target_flops", SPARSE[::-1], "with no speed-up: this share of the FLOPs"),
    Var("SPARSE_RECOVER", "target_recover", SPARSE, "last share of the run: dead set frozen, s = 0"),
    Var("SPARSE_KILL", "target_kill", SPARSE, "path | all | path-fold"),
    Var("SPARSE_ORDER", "target_importance", SPARSE, "taylor | norm"),
    Var("STRATEGY", "strategy", MASKS, "normal | shortcut | slim"),
    Var("PERCENT", "global_percent", SHARES, "share of the prunable channels cut"),
    Var("KEEP", "layer_keep", KEEPS, "every layer keeps at least this share"),
    Var("SHORTCUTS", "shortcuts", ("prune-layers", "layers-only"), "residual blocks removed"),
    Var("LATENCY_REPORT", "latency_report", CUTS, "1: predicted + measured latency", switch=True),
    Var("IMPORTANCE", "importance", MASKS, "bn | l1 | rank (uses DATA)"),
    Var("KD", "kd", ("finetune", "iterate"), "none | hinton | chen"),
    Var("CALIB_IMAGES", "calib_images", ("export-int8",)),
    Var("CALIB_METHOD", "calib_method", ("export-int8",), "minmax | entropy | percentile"),
    Var("TARGET_FLOPS", "target_flops", ("sensitivity",)),
    Var("TARGET_SPEEDUP", "target_speedup", ("sensitivity", "iterate"),
        "instead of TARGET_FLOPS / ROUND_FLOPS (iterate: the whole run)"),
    Var("MAX_DROP", "max_drop", ("sensitivity", "iterate"), "largest mAP@0.5 drop"),
    Var("ROUNDS", "rounds", ("iterate",)),
    Var("ROUND_FLOPS", "per_round_flops", ("iterate",), "each round's share of the FLOPs ('': the tool's 0.8)"),
    Var("ROUND_SPEEDUP", "per_round_speedup", ("iterate",), "> 1: each round this much faster instead"),
    Var("ROUND_EPOCHS", "epochs_per_round", ("iterate",)),
    Var("AMOUNT", "amount", ("unstructured",), "share of the conv weights zeroed"),
    Var("RUNTIME", "runtime", SPARSE + CUTS + ("report",),
        "onnxruntime | openvino | ncnn: latency tables, targets and REPORT timed there; the export "
        "stage writes that runtime's files"),
)


def with_vars(extra: Sequence[Var]) -> tuple[Var, ...]:
    """VARS with a flow's own variables: one of the same name replaces it (other sections)."""
    mine = {v.name: v for v in extra}
    return tuple(mine.pop(v.name, v) for v in VARS) + tuple(mine.values())


@dataclass
class Step:
    """One command of a stage."""
    argv: list[str]
    record: bool = True        # appended to commands.txt when run
    unless: str | None = None  # skipped when this file exists
    clear: str | None = None   # removed first (a half-written output of an earlier try)
    mkdir: str | None = None


class Plan:
    """The stage commands for one recipe, run folder and environment."""

    def __init__(self, recipe_path: str, run: str, env: Mapping[str, str], dry: bool = False,
                 variables: Sequence[Var] = VARS) -> None:
        self.recipe, self.run, self.env, self.dry = recipe_path, L.RunFolder(run), env, dry
        self.vars = tuple(variables)  # what a set variable overrides (VARS, or a flow's with_vars)
        self.py = env.get("PY") or sys.executable
        self._sections: dict[str, dict[str, Any]] = {}
        if not os.path.isfile(recipe_path):
            raise YoloSlimError(f"--recipe: not found: {recipe_path}")
        top = recipe.read_json(recipe_path)
        self.names = [k for k, v in top.items() if isinstance(v, dict)] if isinstance(top, dict) else []

    def say(self, text: str) -> None:
        """A line about the run (a comment in a dry run's list of commands)."""
        print(f"{'# ' if self.dry else ''}{text}", flush=True)

    def set(self, name: str) -> str | None:
        """The variable's value when it is set and not empty (make exports unset ones empty)."""
        return self.env.get(name) or None

    def shipped(self) -> tuple[str, str, bool]:
        """SHIPPED's entry of RUNTIME (unset: onnxruntime)."""
        runtime = self.set("RUNTIME") or "onnxruntime"
        if runtime not in SHIPPED:
            raise YoloSlimError(f"RUNTIME={runtime}: one of {', '.join(SHIPPED)}")
        return SHIPPED[runtime]

    def file(self, name: str) -> str:
        if name == "TEACHER":
            return self.set(name) or self.run.path(L.BASELINE, L.BEST)
        return self.set(name) or FILES[name][0]

    def section(self, name: str) -> dict[str, Any]:
        if name not in self.names:
            raise YoloSlimError(f"{self.recipe}: no section {name!r}, which the pipeline's stages "
                                f"read (recipes/README.md lists them)")
        if name not in self._sections:  # keys as the flags' dests: layer-keep -> layer_keep
            obj = recipe.load(f"{self.recipe}:{name}")[0]
            self._sections[name] = {recipe.key_name(k): v for k, v in obj.items()}
        return self._sections[name]

    def overriding(self, section: str, skip: tuple[str, ...] = ()) -> list[Var]:
        return [v for v in self.vars if (not v.sections or section in v.sections)
                and v.name not in skip and self.set(v.name) is not None]

    def value(self, section: str, key: str, default: Any = None, skip: tuple[str, ...] = ()) -> Any:
        """What the section's command resolves `key` to: a set variable's, else the recipe's."""
        for v in self.overriding(section, skip):
            if v.key == key:
                return self.set(v.name)
        return self.section(section).get(key, default)

    def command(self, entry: list[str], section: str, *files: str, skip: tuple[str, ...] = (),
                extra: tuple[str, ...] = ()) -> list[str]:
        self.section(section)  # a missing section is one line here, not the tool's
        flags = [x for v in self.overriding(section, skip) for x in v.flag(self.set(v.name) or "")]
        return [self.py, *entry, "--config", f"{self.recipe}:{section}", *files, *flags, *extra]

    def train_args(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.file("TRAIN_ARGS")))

    def number(self, section: str, key: str, default: float = 0.0, skip: tuple[str, ...] = ()) -> float:
        v = self.value(section, key, default, skip)
        try:
            return float(v)
        except (TypeError, ValueError):
            raise YoloSlimError(f"{section}.{key}: {v!r} is not a number") from None

    def one(self, folder: str, ext: str) -> str:
        """The one <run>/<folder>/*<ext> an earlier stage wrote; before it ran, its name to be."""
        found = glob.glob(self.run.path(folder, "*" + ext))
        if len(found) == 1:
            return found[0]
        if not found and self.dry:
            return self.run.path(folder, os.path.splitext(os.path.basename(self.file("CFG")))[0] + ext)
        raise YoloSlimError(f"expected exactly one {self.run.path(folder, '*' + ext)} (run the "
                            "previous stage first)")


def entry(script: str, command: str) -> list[str]:
    """A top-level script of the checkout, as the stage scripts named it from its root; without
    a checkout (an installed package), `-m yolo_slim.commands COMMAND`, the same main."""
    path = os.path.join(ROOT, script)
    return [os.path.relpath(path)] if os.path.isfile(path) else ["-m", "yolo_slim.commands", command]


def shown_value(plan: Plan, v: Var) -> str:
    """A variable's value now: the environment's, else its first section's in the recipe."""
    if plan.set(v.name) is not None:
        return plan.set(v.name) or ""
    for s in v.sections or tuple(plan.names):
        if s in plan.names and v.key in plan.section(s):
            got = plan.section(s)[v.key]
            return ("1" if got else "0") if isinstance(got, bool) else str(got)
    return ""
