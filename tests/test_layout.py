"""The package's architecture, checked from the source: imports point one way down the layers
(in-function imports too) and modules of one package import each other without cycles,
knowledge of section types lives in yolo_slim/sections, modules stay short, and scripts are thin.

    core -> darknet -> data -> sections -> nn -> analysis -> eval -> prune -> train -> deploy
         -> report -> tools -> commands          (a package may import only packages to its left)
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "yolo_slim"
LAYERS = ["core", "darknet", "data", "sections", "nn", "analysis", "eval", "prune", "train",
          "deploy", "report", "tools", "commands"]
MODULES = sorted(p for p in PKG.rglob("*.py"))


def package_of(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else ""


def module_name(path: Path) -> str:
    """yolo_slim/prune/masks.py -> yolo_slim.prune.masks (a package's __init__ -> the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


KNOWN = {module_name(p) for p in MODULES}


def yolo_imports(source: str) -> list[tuple[int, str, bool]]:
    """(line, imported module, inside a function?) of every yolo_slim import in `source`,
    module-level or anywhere in a function body: an import deferred into a function is still a
    dependency, it only hides from a reader of the module's head. `from pkg import
    mod` names the module `pkg.mod` where that is a module of the package."""
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level:
                out.append((child.lineno, "." * child.level + (child.module or ""), inner))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("yolo_slim"):
                subs = [f"{child.module}.{a.name}" for a in child.names if f"{child.module}.{a.name}" in KNOWN]
                names_only = len(subs) < len(child.names)  # some names are not modules
                out.extend((child.lineno, m, inner) for m in subs + [child.module] * names_only)
            elif isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, inner) for a in child.names if a.name.startswith("yolo_slim"))
            visit(child, inner)

    visit(ast.parse(source), False)
    return out


def upward_imports(pkg: str, source: str) -> list[str]:
    """What in `source` (a module of package `pkg`) breaks the layering: relative imports, and
    imports of a package at or right of `pkg` in LAYERS, module-level or inside a function."""
    bad = []
    for line, mod, inner in yolo_imports(source):
        where = f"line {line}{' (in a function)' if inner else ''}"
        if mod.startswith("."):
            bad.append(f"{where}: relative import {mod}; use yolo_slim.<layer>")
            continue
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] == pkg or pkg == "":
            continue
        if parts[1] not in LAYERS:
            bad.append(f"{where}: {mod} is in no layer")
        elif LAYERS.index(parts[1]) >= LAYERS.index(pkg):
            bad.append(f"{where}: {pkg}/ imports {mod}, a layer above it ({' -> '.join(LAYERS)})")
    return bad


def package_cycles(sources: dict[str, str]) -> list[list[str]]:
    """The import cycles among the modules of one package ({module name: source}), counting
    in-function imports: each cycle once, as the modules on it, smallest first. A cycle means
    neither module can be read, tested or moved without the other; the shared piece belongs in
    a third module both import."""
    graph = {m: sorted({i for _, i, _ in yolo_imports(s) if i in sources and i != m})
             for m, s in sources.items()}
    # Tarjan's strongly connected components: every component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def test_every_module_sits_in_a_layer():
    assert {package_of(p) for p in MODULES} == set(LAYERS) | {""}
    assert [p.name for p in MODULES if package_of(p) == ""] == ["__init__.py"]


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_imports_point_down(path):
    bad = upward_imports(package_of(path), path.read_text())
    assert not bad, f"{path}: " + "; ".join(bad)


PACKAGES = sorted({package_of(p) for p in MODULES} - {""})
# cycles whose fix touches files another change holds at the moment; each must still be there
# (remove the entry with the fix), and no other cycle may appear.
PENDING: dict[str, list[list[str]]] = {}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_import_cycle_inside_a_package(pkg):
    sources = {module_name(p): p.read_text() for p in MODULES if package_of(p) == pkg}
    cycles = package_cycles(sources)
    assert cycles == PENDING.get(pkg, []), f"import cycles in {pkg}/ (in-function imports " \
        f"count): {'; '.join(' <-> '.join(c) for c in cycles) or 'none'}; expected " \
        f"{PENDING.get(pkg, 'none')} (tests/test_layout.py: PENDING)"


def test_the_checks_see_in_function_imports_and_cycles():
    """The two checks above, on made-up modules: an upward import hidden in a function body
    and a cycle closed by one are found."""
    hidden = "import os\n\ndef f():\n    from yolo_slim.train.engine import train\n    return train\n"
    assert upward_imports("prune", hidden) == [
        f"line 4 (in a function): prune/ imports yolo_slim.train.engine, a layer above it "
        f"({' -> '.join(LAYERS)})"]
    assert upward_imports("deploy", hidden) == []
    a = "from yolo_slim.prune import masks\n"
    b = "def g():\n    from yolo_slim.prune.channels import run\n"
    c = "from yolo_slim.core.errors import YoloSlimError\n"
    assert package_cycles({"yolo_slim.prune.channels": a, "yolo_slim.prune.masks": b,
                           "yolo_slim.prune.verify": c}) == \
        [["yolo_slim.prune.channels", "yolo_slim.prune.masks"]]
    assert package_cycles({"yolo_slim.prune.channels": a, "yolo_slim.prune.masks": c}) == []


# a comparison with a section type's name outside the registry is knowledge in the wrong place
TYPE_SWITCH = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](convolutional|maxpool|upsample|route|shortcut|"""
                         r"""yolo|sam|scale_channels|reorg3d|avgpool|dropout)["']""")


@pytest.mark.parametrize("path", [p for p in MODULES if package_of(p) not in ("sections", "darknet")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_section_type_switch_outside_the_registry(path):
    for k, line in enumerate(path.read_text().split("\n"), 1):
        code = line.split("#", 1)[0]
        m = TYPE_SWITCH.search(code)
        # strategy names share a word with a section type: "shortcut" as a strategy is allowed
        if m and "strategy" not in code:
            pytest.fail(f"{path}:{k}: type switch on [{m.group(2)}]; ask yolo_slim.sections instead")


def test_modules_stay_short_and_scripts_thin():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().split("\n"))) > 420}
    assert not long, f"modules over 420 lines: {long}"
    scripts = {p.name: len(p.read_text().split("\n")) for p in ROOT.glob("*.py")}
    assert scripts and max(scripts.values()) <= 110, scripts
