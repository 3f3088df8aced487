"""One command surface: `yolo-slim COMMAND` runs the same main function as the top-level script
or `python -m` module of that name, and every entry point answers a bad flag with exactly one
line on stderr and exit status 2 (no argparse usage block, no traceback).

Most cases call the mains in-process (the same cli_main wrapper a process runs, without paying
a torch import each); a few run real processes: the console script, a script, a module."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_slim.commands.main import COMMANDS, main as yolo_slim

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in ROOT.glob("*.py"))


def module_entry_points() -> list[str]:
    """Every package module that runs as `python -m` (has an `if __name__ == "__main__"`); a
    package's __main__.py by that name (importing it runs nothing)."""
    out = []
    for p in sorted((ROOT / "yolo_slim").rglob("*.py")):
        tree = ast.parse(p.read_text())
        if any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
            out.append(".".join(p.relative_to(ROOT).with_suffix("").parts))
    return out


MODULES = module_entry_points()
# plain argparse in files another change holds now: their fix is `p = Parser(...)` from
# yolo_slim.core.cli and `a = parse(p, argv)` (None after --help) instead of argparse's
PENDING: set[str] = set()
PENDING_COMMANDS = {n for n, (m, _) in COMMANDS.items() if m in PENDING}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{Path(name).stem}_script", ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def call(fn, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a main called as a process would call it."""
    try:
        rc = fn(argv)
    except SystemExit as e:  # a parser that is not core.cli.Parser exits from inside argparse
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, out: str, err: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    assert out == "", out


def pending(names: set[str]):
    """Mark the cases of `names` as known failures (see where each set is declared): strict,
    so the fix must remove the name from the set."""
    return lambda n: pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="pending")) \
        if n in names else n


@pytest.mark.parametrize("name", [pending(PENDING_COMMANDS)(n) for n in COMMANDS])
def test_every_command_refuses_a_bad_flag_in_one_line(name, capsys):
    assert_one_line_error(*call(yolo_slim, [name, "--no-such-flag"], capsys))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_refuses_a_bad_flag_in_one_line(script, capsys):
    assert_one_line_error(*call(load_script(script).main, ["--no-such-flag"], capsys))


@pytest.mark.parametrize("module", [pending(PENDING)(m) for m in MODULES])
def test_every_module_refuses_a_bad_flag_in_one_line(module, capsys):
    mod = importlib.import_module(module)
    assert_one_line_error(*call(mod.main, ["--no-such-flag"], capsys))


def commands_running(main) -> list[str]:
    return [n for n, (m, _) in COMMANDS.items() if importlib.import_module(m).main is main]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_is_a_command(script):
    """Each top-level script is one sub-command, with the same main function (which the
    sub-command's help names the script of)."""
    hits = commands_running(load_script(script).main)
    assert len(hits) == 1, f"{script}: sub-commands with its main: {hits}"
    assert script in COMMANDS[hits[0]][1], f"{hits[0]}'s help does not name {script}"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "yolo_slim.commands.__main__"])
def test_a_module_is_a_command(module):
    hits = commands_running(importlib.import_module(module).main)
    assert len(hits) == 1, f"python -m {module}: sub-commands with its main: {hits}"


def test_help_lists_every_command(capsys):
    rc, out, err = call(yolo_slim, ["--help"], capsys)
    assert rc == 0 and err == ""
    listed = [line.split()[0] for line in out.split("commands:\n", 1)[1].splitlines()]
    assert listed == list(COMMANDS)


@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["--no-such-flag"]])
def test_no_or_unknown_command_is_one_line(argv, capsys):
    assert_one_line_error(*call(yolo_slim, argv, capsys))


def run(*cmd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_as_processes():
    """What a user types: the console script (installed by `pip install -e .`), a top-level
    script and `python -m`, each with a bad flag, and the console script's --help."""
    exe = shutil.which("yolo-slim", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("no yolo-slim console script next to this python (pip install -e .)")
    for cmd in ([exe, "graph", "--no-such-flag"], [sys.executable, "prune_layers.py", "--no-such-flag"],
                [sys.executable, "-m", "yolo_slim.commands", "zoo", "--no-such-flag"]):
        p = run(*cmd)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (cmd, p.stderr)
        assert p.stderr.startswith("error: "), (cmd, p.stderr)
    p = run(exe, "--help")
    assert p.returncode == 0 and all(f"  {n} " in p.stdout for n in COMMANDS), p.stdout
