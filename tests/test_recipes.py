"""Recipes (--config, core/recipe.py) for every command: a recipe file and the same flags give
the same resolved config; a flag given on the command line overrides the file; an unknown key
or a bad value is one line naming file and key (exit 2); the demo's recipe holds every stage's
defaults (and the scripts none); and a changed option is refused on --resume wherever it would
change the run (train, distill with its --kd/--temperature, iterate)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from yolo_slim.commands.main import COMMANDS, command_main
from yolo_slim.core.cli import Parser
from yolo_slim.tools.iterate import parse_train_overrides

ROOT = Path(__file__).resolve().parents[1]

# per command: flags set off their defaults, as a recipe writes them (typed JSON values)
SAMPLES: dict[str, dict] = {
    "train": {"cfg": "cfg/demo.cfg", "data": "d.data", "epochs": 7, "lr0": 0.02, "sr": True,
              "s": 0.01, "lr_steps": [0.5, 0.7], "sparsity_update": "subgradient", "ema": False,
              "img_size": 256, "mosaic": 1.0, "resume": "runs/x/last.pt"},
    "distill": {"weights": "p.weights", "data": "d.data", "kd": "chen", "temperature": 3.0,
                "kd_weight": 0.5, "margin": 0.1, "t_weights": "t.pt", "epochs": 6,
                "amp": False, "output_dir": "runs/ft"},
    "prune": {"weights": "w.pt", "output_dir": "o", "global_percent": 0.5, "layer_keep": 0.1,
              "round_to": "auto", "importance": "l1", "latency_report": True, "img_size": 256},
    "prune-layers": {"weights": "w.pt", "output_dir": "o", "shortcuts": 2, "rank": "max",
                     "target_flops": 0.5, "round_to": 8, "list": True},
    "sensitivity": {"weights": "w.pt", "data": "d.data", "output_dir": "o", "ratios": [0.2, 0.4],
                    "target_speedup": 1.5, "layer_keep": 0.1, "round_to": 4, "max_drop": 0.05},
    "iterate": {"weights": "w.pt", "data": "d.data", "output_dir": "o", "rounds": 2, "kd": "chen",
                "layer_keep": 0.1, "per_round_flops": 0.7, "train": {"lr0": 0.002, "ema": False,
                                                                     "lr_steps": [0.5, 0.7]}},
    "export": {"weights": "w.pt", "format": "onnx", "img_size": [256, 320], "int8": True,
               "calib_data": "d.data", "calib_method": "entropy", "opset": 17},
    "evaluate": {"weights": "w.pt", "data": "d.data", "img_size": 256, "half": True,
                 "preprocess": "darknet", "conf_thres": 0.01},
    "detect": {"weights": "w.pt", "source": "imgs", "img_size": 320, "multi_label": True,
               "iou_thres": 0.5},
    "latency": {"cfg": "cfg/demo.cfg", "img_size": 256, "threads": 1, "refresh": True, "stat": "median"},
    "latency-table": {"table": "t.json", "plot": "t.png"},
    "graph": {"cfg": "cfg/demo.cfg"},
    "blocks": {"cfg": "cfg/demo.cfg"},
    "unstructured": {"weights": "w.pt", "output_dir": "o", "amount": 0.3, "onnx": False, "runs": 5},
    "report": {"run": "runs/demo", "data": "d.data", "img_size": 256},
    "zoo": {"names": ["yolov3-tiny"], "out": "c", "classes": 3},
    "synthetic": {"out": "x", "n_train": 10, "img_size": [64, 96], "seed": 3},
    "real-assets": {"tile": 320, "overlap": 0.3, "valid_photos": "a,b"},
    "darknet-parity": {"modes": ["darknet", "resize"], "json": "rows.json"},
    "pipeline": {"recipe": "r.json", "run": "runs/x", "stages": "baseline,sparse", "dry_run": True},
}
POSITIONAL = {"table", "names"} | {"cfg"}  # graph/blocks' cfg is positional too


def flags(name: str, sample: dict) -> list[str]:
    """The command line that says what the recipe says."""
    out: list[str] = []
    for k, v in sample.items():
        flag = "--" + k.replace("_", "-")
        if k in POSITIONAL and name in ("latency-table", "graph", "blocks", "zoo"):
            out += [str(x) for x in (v if isinstance(v, list) else [v])]
        elif k == "train":
            out += [x for t, val in v.items() for x in ("--train", f"{t}={json.dumps(val).strip(chr(34))}"
                                                         if not isinstance(val, list) else
                                                         f"{t}={','.join(map(str, val))}")]
        elif v is True:
            out.append(flag)
        elif v is False:
            out.append("--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            out += [flag, *map(str, v)]
        else:
            out += [flag, str(v)]
    return out


class Parsed(BaseException):
    """Raised by the command's own parser once it has parsed: the main goes no further."""

    def __init__(self, ns, given):
        super().__init__()
        self.ns, self.given = ns, given


@pytest.fixture
def parse_of(monkeypatch):
    """parse_of(command, argv) -> (namespace, given): what the command's main parsed."""
    real, depth = Parser.parse_args, [-1]  # -1: not inside run()

    def stop(self, args=None, namespace=None):
        if depth[0] < 0:
            return real(self, args, namespace)
        depth[0] += 1  # a parse inside the parse (iterate's --train checks) goes on
        try:
            ns = real(self, args, namespace)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            raise Parsed(ns, set(self.given))
        return ns

    monkeypatch.setattr(Parser, "parse_args", stop)

    def run(name: str, argv: list[str]):
        depth[0] = 0
        try:
            with pytest.raises(Parsed) as e:
                command_main(name)(argv)
        finally:
            depth[0] = -1
        return e.value.ns, e.value.given
    return run


def resolved(ns) -> dict:
    return {k: v for k, v in vars(ns).items() if k != "config"}


def write(tmp_path: Path, obj, name: str = "recipe.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_every_command_has_a_sample():
    assert set(SAMPLES) == set(COMMANDS)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_recipe_and_flags_give_the_same_config(name, parse_of, tmp_path):
    sample = SAMPLES[name]
    by_flags, given_f = parse_of(name, flags(name, sample))
    by_recipe, given_r = parse_of(name, ["--config", write(tmp_path, sample)])
    assert resolved(by_recipe) == resolved(by_flags)
    assert given_r == given_f
    for k, v in sample.items():  # and both are the values written, typed
        got = getattr(by_recipe, k)
        assert (parse_train_overrides(got) if k == "train" else got) == v, k
    assert by_recipe.config == [str(tmp_path / "recipe.json")]


def test_keys_take_dashes_or_underscores_and_a_section(parse_of, tmp_path):
    path = write(tmp_path, {"base": {"lr0": 0.03, "warmup-epochs": 2},
                            "mine": {"extends": "base", "--epochs": 4, "#": "a comment"}})
    ns, given = parse_of("train", ["--config", f"{path}:mine"])
    assert (ns.lr0, ns.warmup_epochs, ns.epochs) == (0.03, 2.0, 4)
    assert given == {"lr0", "warmup_epochs", "epochs"}


def test_a_flag_overrides_the_recipe(parse_of, tmp_path):
    path = write(tmp_path, {"lr0": 0.03, "epochs": 4, "ema": False})
    ns, _ = parse_of("train", ["--config", path, "--lr0", "0.05", "--ema"])
    assert (ns.lr0, ns.epochs, ns.ema) == (0.05, 4, True)
    # a later recipe overrides an earlier one, the command line both
    later = write(tmp_path, {"epochs": 9, "lr0": 0.04}, "later.json")
    ns, _ = parse_of("train", ["--config", path, "--config", later, "--epochs", "11"])
    assert (ns.lr0, ns.epochs) == (0.04, 11)


def test_a_flag_overrides_the_recipes_choice_in_a_group(parse_of, tmp_path):
    """prune's targets exclude each other: --target-flops on the line drops the recipe's
    --global-percent; the recipe's --weights and --output-dir satisfy the required flags."""
    path = write(tmp_path, {"weights": "w.pt", "output_dir": "o", "global_percent": 0.5,
                            "layer_keep": 0.1})
    ns, given = parse_of("prune", ["--config", path, "--target-flops", "0.4"])
    assert (ns.target_flops, ns.global_percent, ns.layer_keep, ns.weights) == (0.4, None, 0.1, "w.pt")
    assert "global_percent" not in given


def test_a_recipe_with_two_exclusive_flags_is_one_line(tmp_path, capsys):
    path = write(tmp_path, {"weights": "w.pt", "output_dir": "o", "global_percent": 0.5,
                            "target_flops": 0.4, "dead": False})
    assert one_line_error("prune", ["--config", path], capsys) == \
        f"error: --config {path}: --global-percent and --target-flops exclude each other"


def test_iterates_train_items_add_to_the_recipes(parse_of, tmp_path):
    path = write(tmp_path, {"weights": "w", "data": "d", "output_dir": "o",
                            "train": {"lr0": 0.002, "workers": 0}})
    ns, _ = parse_of("iterate", ["--config", path, "--train", "lr0=0.003"])
    assert parse_train_overrides(ns.train) == {"lr0": 0.003, "workers": 0}


def one_line_error(name: str, argv: list[str], capsys) -> str:
    rc = command_main(name)(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and out == "", (rc, out, err)
    return lines[0]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_an_unknown_key_is_one_line_naming_file_and_key(name, tmp_path, capsys):
    path = write(tmp_path, {"no_such_key": 1})
    assert one_line_error(name, ["--config", path], capsys) == \
        f"error: {path}: unknown key 'no_such_key': not a flag of this command (--help lists them)"


@pytest.mark.parametrize("recipe, expect", [
    ({"lr0": -1}, "{path}: lr0: must be > 0, got -1"),
    ({"epochs": 2.5}, "{path}: epochs: '2.5' is not an integer"),
    ({"ema": "no"}, '{path}: ema: expected true or false, got "no"'),
    ({"lr_schedule": "linear"}, "{path}: lr_schedule: 'linear' is not one of cosine, step"),
    ({"lr_steps": [0.5, "x"]}, "{path}: lr_steps: 'x' is not a number"),
    ({"lr": 0.1}, "{path}: unknown key 'lr': not a flag of this command (did you mean lrf or lr0?)"),
    ([1, 2], "{path}: a recipe is a JSON object of flag names and values"),
])
def test_a_bad_value_is_one_line_naming_file_and_key(recipe, expect, tmp_path, capsys):
    path = write(tmp_path, recipe)
    assert one_line_error("train", ["--config", path], capsys) == "error: " + expect.format(path=path)


def test_bad_files_and_sections_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "none.json")
    assert one_line_error("train", ["--config", missing], capsys) == \
        f"error: --config: recipe not found: {missing}"
    (tmp_path / "bad.json").write_text("{lr0: 1}")
    assert "bad.json: not valid JSON" in one_line_error("train", ["--config", str(tmp_path / "bad.json")], capsys)
    path = write(tmp_path, {"a": {"extends": "b"}, "b": {"extends": "a"}, "c": {"extends": "zz"}})
    assert one_line_error("train", ["--config", f"{path}:x"], capsys) == \
        f"error: {path}: no section 'x' (it has a, b, c)"
    assert one_line_error("train", ["--config", f"{path}:a"], capsys) == \
        f"error: {path}:a: extends 'a' extends itself (a -> b -> a)"
    assert one_line_error("train", ["--config", f"{path}:c"], capsys) == \
        f"error: {path}:c: extends 'zz': no such section (the file has a, b, c)"
    path = write(tmp_path, {"weights": "w", "data": "d", "output_dir": "o", "train": {"lr": 1}})
    assert one_line_error("iterate", ["--config", path], capsys) == \
        f"error: {path}: train: --train 'lr=1': expected FIELD=VALUE with a training flag name"


# each section of recipes/demo.json, the command that reads it, and the files the pipeline adds
DEMO_SECTIONS = {
    "baseline": ("train", []), "sparse": ("train", []), "sparse-flops": ("train", []),
    "prune": ("prune", ["--weights", "w", "--output-dir", "o"]),
    "prune-percent": ("prune", ["--weights", "w", "--output-dir", "o"]),
    "prune-sensitivity": ("prune", ["--weights", "w", "--output-dir", "o", "--layer-ratios", "r"]),
    "prune-layers": ("prune-layers", ["--weights", "w", "--output-dir", "o"]),
    "layers-only": ("prune-layers", ["--weights", "w", "--output-dir", "o"]),
    "finetune": ("distill", []), "export": ("export", ["--weights", "w"]),
    "export-int8": ("export", ["--weights", "w"]), "report": ("report", ["--run", "r", "--data", "d"]),
    "sensitivity": ("sensitivity", ["--weights", "w", "--data", "d", "--output-dir", "o"]),
    "iterate": ("iterate", ["--weights", "w", "--data", "d", "--output-dir", "o"]),
    "unstructured": ("unstructured", ["--weights", "w", "--output-dir", "o"]),
}


def test_every_demo_section_is_its_commands_recipe(parse_of):
    """recipes/demo.json holds the demo's defaults: each stage's section parses with the
    command the pipeline runs it with (tests/test_pipeline_command.py: to the options the
    stage scripts gave before), every section at the demo's 256 px, every training stage
    with the short-schedule training."""
    demo = str(ROOT / "recipes" / "demo.json")
    top = json.loads((ROOT / "recipes" / "demo.json").read_text())
    assert set(DEMO_SECTIONS) == {k for k, v in top.items() if isinstance(v, dict)} - {"img", "run", "train"}
    got = {}
    for section, (name, files) in DEMO_SECTIONS.items():
        ns, given = parse_of(name, ["--config", f"{demo}:{section}", *files])
        got[section] = ns
        assert getattr(ns, "img_size") in (256, [256]), section
    for s in ("baseline", "sparse", "finetune"):
        ns = got[s]
        assert (ns.nominal_batch, ns.lr0, ns.cls, ns.scale, ns.warmup_epochs, ns.mosaic, ns.ema_tau,
                ns.eval_interval, ns.batch_size, ns.workers) == (16, 0.02, 128, 0.25, 1, 1.0, 100, 5, 16, -1)
    assert [got[s].epochs for s in ("baseline", "sparse", "finetune")] == [20, 5, 6]
    # one target each: the sparse stage's speed-up, or with it off sparse-flops' FLOPs share
    assert (got["sparse"].target_speedup, got["sparse"].target_flops) == (3.0, 0.0)
    assert (got["sparse-flops"].target_speedup, got["sparse-flops"].target_flops) == (0.0, 0.25)
    assert (got["prune"].dead, got["prune-percent"].global_percent, got["prune-layers"].shortcuts) == \
        (True, 0.6, 1)
    train = parse_train_overrides(got["iterate"].train)  # iterate's fine-tunes train alike
    assert {k: getattr(got["baseline"], k) for k in train} == train
    assert (got["iterate"].per_round_flops, got["iterate"].target_speedup) == (0.8, 0.0)
    assert got["unstructured"].structured_flops == 1 - got["unstructured"].amount


def test_the_scripts_hold_no_default_of_the_recipe():
    """Defaults live once: no stage script (nor common.sh) gives a variable of the pipeline a
    value; a set one overrides the recipe."""
    import re
    from yolo_slim.commands.pipeline_plan import VARS
    names = {v.name for v in VARS}
    for path in sorted((ROOT / "scripts").glob("*.sh")):
        text = path.read_text()
        assigned = set(re.findall(r"^\s*([A-Z_]+)=", text, re.M)) | \
            set(re.findall(r"\$\{([A-Z_]+):?[-=]", text))
        assert not assigned & names, (path.name, sorted(assigned & names))


def test_the_prune_targets_are_one_list():
    """The pruner's TARGETS are the flags of prune's exclusive group "target"."""
    from yolo_slim.commands.prune import parser
    from yolo_slim.prune.channels import TARGETS
    group, = parser()._mutually_exclusive_groups
    assert sorted(a.dest for a in group._group_actions) == sorted(TARGETS)
