"""Where a script may write: one guard that no output is one of its inputs, and the temp files
of atomic writes.

`guard_outputs` runs before a script writes anything: every output path is compared with every
input path after resolving symlinks, `..` and hard links, so `--output-dir` next to `--weights
best.pt`, `--output` naming the cfg or `detect.py --output-dir` equal to `--source` are refused
with the flags and paths involved, instead of replacing the user's files.

Temp files of an atomic write are `.<name>.<pid>.part` in the output's folder: hidden, and
ending in `.part`, so no glob of the final kind (`*.onnx`, `*.weights`) ever matches one. A run
killed mid-write leaves one behind; the next run's guard_outputs removes those of its outputs
whose process is gone.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable, Mapping

from yolo_slim.core.errors import YoloSlimError
from yolo_slim.core.temps import _TEMP, temp_path, user_path  # noqa: F401

Paths = Mapping[str, "str | Iterable[str] | None"]  # flag or label -> one path or several

# what earlier versions named their temps: x.weights.tmp123, m.onnx.tmp123.onnx
_LEGACY = re.compile(r"^(?P<base>.+)\.tmp(?P<pid>\d+)(\.onnx)?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours
        return True
    return True


def clear_stale_temps(paths: "str | Iterable[str]") -> list[str]:
    """Remove the temps that earlier, killed writes of these outputs left (their process is
    gone); returns their paths. One listing per folder."""
    by_folder: dict[str, set[str]] = {}
    for p in [paths] if isinstance(paths, str) else paths:
        folder, base = os.path.split(os.path.abspath(p))
        by_folder.setdefault(folder, set()).add(base)
    removed = []
    for folder, bases in by_folder.items():
        try:
            names = os.listdir(folder)
        except OSError:  # not there yet: nothing to clear
            continue
        for name in names:
            m = _TEMP.match(name) or _LEGACY.match(name)
            if m and m["base"] in bases and not _alive(int(m["pid"])):
                try:
                    os.remove(os.path.join(folder, name))
                    removed.append(os.path.join(folder, name))
                except OSError:
                    pass
    return removed


def _flatten(paths: Paths) -> list[tuple[str, str]]:
    out = []
    for label, ps in paths.items():
        for p in [ps] if isinstance(ps, (str, os.PathLike)) else (ps or []):
            if p:
                out.append((label, os.fspath(p)))
    return out


def _identity(path: str) -> tuple:
    """Resolved path, and (device, inode) when the file exists (catches hard links)."""
    real = os.path.normcase(os.path.realpath(path))
    try:
        st = os.stat(path)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


def guard_outputs(inputs: Paths, outputs: Paths) -> None:
    """Raise a YoloSlimError when an output file would be an input or an existing folder; then
    clear the stale temps of the outputs (clear_stale_temps).

    inputs/outputs: {flag or label: path or paths}, e.g. inputs={"--weights": w, "--data":
    data, "image": [...]}, outputs={"--output-dir": [dir/best.pt, dir/last.pt, ...]}."""
    ins = [(label, p, *_identity(p)) for label, p in _flatten(inputs)]
    by_real = {real: (label, p) for label, p, real, _ in ins}
    by_inode = {ino: (label, p) for label, p, _, ino in ins if ino is not None}
    for label, out in _flatten(outputs):
        real, ino = _identity(out)
        hit = by_real.get(real) or (by_inode.get(ino) if ino is not None else None)
        if hit:
            which = f"{hit[0]} {hit[1]}" if hit[0] else hit[1]
            raise YoloSlimError(f"{label}: {out} would overwrite the input {which}; "
                                "choose another output")
        if os.path.isdir(out):
            raise YoloSlimError(f"{label}: {out} is a directory, not a file")
        _check_parent(label, out)
    clear_stale_temps([out for _, out in _flatten(outputs)])


def _check_parent(label: str, out: str) -> None:
    """The nearest existing folder above an output must be a folder, not a file, and writable
    (checked before any work, not after an epoch of it); missing folders below it are made."""
    parent = os.path.dirname(os.path.abspath(out))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise YoloSlimError(f"{label}: {parent} is a file, not a directory")
    if parent and not os.access(parent, os.W_OK | os.X_OK):
        raise YoloSlimError(f"{label}: {parent} is not writable")


def ensure_dir(path: str, flag: str = "--output-dir") -> str:
    """Create an output folder; a file in its place is a one-line error naming the flag."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise YoloSlimError(f"{flag} {path} exists and is not a directory")
    os.makedirs(path, exist_ok=True)
    return path


def read_text(path: str) -> str:
    """A text input, BOM-safe (files saved by Windows tools start with U+FEFF)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return f.read()


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
