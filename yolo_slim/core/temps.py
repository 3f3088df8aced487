"""The names of an atomic write's temp files: `.<name>.<pid>.part` in the output's folder
(hidden, and ending in `.part`, so no glob of the final kind matches one). Its own module, below
both core/errors.py (whose atomic write makes them and whose messages name the user's file
instead) and core/paths.py (whose guard clears the ones a killed run left): errors and paths
each needed the other."""
from __future__ import annotations

import os
import re

_TEMP = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)\.part(\..*)?$")


def temp_path(path: str, tag: str = "") -> str:
    """The temp file an atomic write of `path` goes through (`tag` for a second one)."""
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.{os.getpid()}.part{tag}")


def user_path(path: str | os.PathLike) -> str:
    """The output a temp file stands for (error messages name what the user asked for)."""
    folder, name = os.path.split(os.fspath(path))
    m = _TEMP.match(name)
    return os.path.join(folder, m["base"]) if m else os.fspath(path)
