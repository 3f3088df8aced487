"""Shared test fixtures: where the repo and the darknet cfg corpus are, and a way to run a
top-level script the way a user does (a subprocess with the project's venv python)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

# Tests use tiny tensors: one intra-op thread is as fast, and on a shared, busy 2-core box
# several OpenMP threads spin-wait and multiply both CPU and wall time (measured 10x on a
# 64 px forward of yolov3 under load). YOLO_SLIM_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("YOLO_SLIM_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
# the corpus lives next to the repo (../shared/darknet-cfg); it is never copied into the repo
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet-cfg"
VENV_PY = REPO / ".venv" / "bin" / "python"


def python_exe() -> str:
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def run_script_fn(name: str, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    """Run `<repo>/<name>` with the venv python from the repo root; (rc, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run([python_exe(), str(REPO / name), *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (CORPUS / "index.json").is_file():
        pytest.skip(f"darknet cfg corpus not found at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def corpus_index(corpus_dir: Path) -> list[dict]:
    return json.loads((corpus_dir / "index.json").read_text())


@pytest.fixture(scope="session")
def run_script() -> Callable[..., tuple[int, str, str]]:
    return run_script_fn


@pytest.fixture
def write_cfg_file(tmp_path: Path) -> Callable[[str, str], str]:
    """Write cfg text to tmp_path/<name> (bytes as given, no newline translation)."""

    def write(text: str, name: str = "t.cfg") -> str:
        path = tmp_path / name
        path.write_bytes(text.encode())
        return str(path)

    return write


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> str:
    """.data file of a tiny synthetic set (8 train + 4 valid images, 64 px, seed 0), made once
    per session and shared: treat it as read-only."""
    from yolo_slim.data.synthetic import make_shapes_dataset
    return make_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), 8, 4, 64, 0)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes >5 s on a busy 2-core box; run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
