"""The package's architecture, checked from the source: imports point one way down the layers,
knowledge of section types lives in yolo_slim/sections, modules stay short, and scripts are thin.

    core -> darknet -> data -> sections -> nn -> analysis -> eval -> prune -> train -> deploy
         -> report -> tools          (a package may import only packages to its left)
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "yolo_slim"
LAYERS = ["core", "darknet", "data", "sections", "nn", "analysis", "eval", "prune", "train",
          "deploy", "report", "tools"]
MODULES = sorted(p for p in PKG.rglob("*.py"))


def package_of(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else ""


def yolo_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every yolo_slim import, module-level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("yolo_slim"):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append((node.lineno, "." * node.level + (node.module or "")))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("yolo_slim")]
    return out


def test_every_module_sits_in_a_layer():
    assert {package_of(p) for p in MODULES} == set(LAYERS) | {""}
    assert [p.name for p in MODULES if package_of(p) == ""] == ["__init__.py"]


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_imports_point_down(path):
    pkg = package_of(path)
    for line, mod in yolo_imports(path):
        assert not mod.startswith("."), f"{path}:{line}: relative import {mod}; use yolo_slim.<layer>"
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] == pkg or pkg == "":
            continue
        assert parts[1] in LAYERS, f"{path}:{line}: {mod} is in no layer"
        assert LAYERS.index(parts[1]) < LAYERS.index(pkg), \
            f"{path}:{line}: {pkg}/ imports {mod}, a layer above it ({' -> '.join(LAYERS)})"


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
