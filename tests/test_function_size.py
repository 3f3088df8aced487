"""Functions stay short: none in yolo_slim/ is over MAX_LINES lines (def to last line, docstring
and nested functions included). A long function is where a second job hides (engine._train was
154 lines: set-up, resume, the micro-batch loop and the epoch's files in one); split it where
the jobs part, not at an arbitrary line."""
from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "yolo_slim"
MAX_LINES = 80

# Exempt for now: these files were being rewritten by other parts of issue 28 when the check
# came in (runtimes, commands, evaluation, the pipeline report, the prune CLI, the training
# config), so this test could not hold them to a size their authors had not seen. Every one of
# them is under MAX_LINES today; drop each entry once its rewrite has landed.
ALLOWED = ("yolo_slim/deploy/*", "yolo_slim/commands/*", "yolo_slim/eval/*",
           "yolo_slim/tools/latency.py", "yolo_slim/report/pipeline_report.py",
           "yolo_slim/prune/cli.py", "yolo_slim/train/config.py")


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length in lines) of every function and method."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def test_no_function_is_over_the_limit():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(fnmatch(rel, pat) for pat in ALLOWED):
            continue
        long += [f"{rel}:{line} {name} ({n} lines)" for name, line, n in
                 function_lengths(path.read_text(encoding="utf-8")) if n > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_the_measure_counts_def_to_last_line():
    src = ("class A:\n    def f(self):\n        '''doc'''\n\n        def g():\n"
           "            return 1\n        return g\n\n\nasync def h():\n    pass\n")
    assert function_lengths(src) == [("A.f", 2, 6), ("A.f.g", 5, 2), ("h", 10, 2)]
    assert all(any(fnmatch(p.relative_to(ROOT).as_posix(), pat) for p in PKG.rglob("*.py"))
               for pat in ALLOWED), "an allowed pattern matches no file: drop it"
