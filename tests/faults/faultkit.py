"""Shared pieces of the fault suite (docs/faults.md): a tiny detector and its data, the scripts'
main() run in-process, a disk that fills up, and the checks every fault shares: one `error:`
line, nothing half-written under a final name, no temp file left."""
from __future__ import annotations

import builtins
import errno
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Callable

import pytest

from cfgs import conv_section, tiny_detector_cfg

REPO = Path(__file__).resolve().parents[2]


def python_exe() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable

# 64 px, strides 2-4-8, 5 classes: the synthetic shapes set's class count
TINY = tiny_detector_cfg(conv_section(8, 3, 2), conv_section(16, 3, 2), conv_section(16, 3, 2))
TRAIN = ("--img-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu",
         "--no-progress", "--seed", "0")
_MAINS: dict[str, Callable] = {}


def main_of(name: str) -> Callable:
    """A top-level script's main(argv), loaded once (the cli_main wrapper a user gets)."""
    if name not in _MAINS:
        spec = importlib.util.spec_from_file_location(f"{name}_faults", REPO / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MAINS[name] = mod.main
    return _MAINS[name]


def one_error_line(err: str, pattern: str = "") -> str:
    """stderr is exactly one `error: ...` line (matching pattern), no traceback, no temp name."""
    # a progress bar ends in "\r": the terminal shows what follows its last one
    lines = [ln.split("\r")[-1] for ln in err.strip().split("\n")]
    lines = [ln for ln in lines if ln.strip() and not ln.startswith("warning:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert ".part" not in lines[0], lines[0]
    return lines[0]


def temps(folder) -> list[str]:
    """Temp files of atomic writes (hidden `.<name>.<pid>.part`) anywhere below folder."""
    return [str(p) for p in Path(folder).rglob(".*.part*")]


def run(name: str, capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main_of(name)([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def tiny(tmp_path, shapes_data) -> dict[str, str]:
    """tiny.cfg, its model as tiny.pt and tiny.weights, the shapes .data, in tmp_path."""
    import torch
    from yolo_slim.darknet.cfg import parse_cfg_text
    from yolo_slim.nn.model import Darknet
    from yolo_slim.nn.weights import save_checkpoint, save_darknet_weights
    (tmp_path / "tiny.cfg").write_text(TINY)
    torch.manual_seed(0)
    m = Darknet(parse_cfg_text(TINY, warn=False))
    save_checkpoint(m, str(tmp_path / "tiny.pt"))
    save_darknet_weights(m, str(tmp_path / "tiny.weights"))
    return {"cfg": str(tmp_path / "tiny.cfg"), "pt": str(tmp_path / "tiny.pt"),
            "weights": str(tmp_path / "tiny.weights"), "data": shapes_data, "d": str(tmp_path),
            "images": os.path.join(os.path.dirname(shapes_data), "valid.txt")}


class FullDisk:
    """builtins.open for files whose final name (a temp stands for it) is `name`: the first
    `skip` such files are written whole, the later ones get `room` bytes and then OSError
    ENOSPC, after writing what fitted, as a real full disk does."""

    def __init__(self, name: str, room: int = 0, skip: int = 0, err: int = errno.ENOSPC):
        self.name, self.room, self.skip, self.err = name, room, skip, err
        self.hits = 0

    def __call__(self, file, mode="r", *a, **kw):
        f = _OPEN(file, mode, *a, **kw)
        if isinstance(file, int) or not set(mode) & set("wax"):
            return f
        from yolo_slim.core.paths import user_path
        if os.path.basename(user_path(os.fspath(file))) != self.name:
            return f
        self.hits += 1
        return f if self.hits <= self.skip else _Filling(f, self)


_OPEN = builtins.open


class _Filling:
    def __init__(self, f, disk: FullDisk):
        self.f, self.disk, self.left = f, disk, disk.room

    def write(self, data) -> int:
        n = min(len(data), self.left)
        self.f.write(data[:n])
        self.f.flush()
        self.left -= n
        if n < len(data):
            raise OSError(self.disk.err, os.strerror(self.disk.err))
        return n

    def __getattr__(self, k):
        return getattr(self.f, k)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def disk_full(monkeypatch) -> Callable[..., FullDisk]:
    """disk_full("last.pt", skip=1): the second write of last.pt finds the disk full."""

    def install(name: str, room: int = 0, skip: int = 0, err: int = errno.ENOSPC) -> FullDisk:
        disk = FullDisk(name, room, skip, err)
        monkeypatch.setattr(builtins, "open", disk)
        return disk

    return install
