"""One error type for everything a user can get wrong, and the CLI wrapper that turns it into
a one-line message with exit status 2 instead of a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from yolo_slim.core.temps import temp_path, user_path


class YoloSlimError(Exception):
    """A problem with the user's input (file, flag, data); printed as one line, exit 2."""


class TargetUnreachable(YoloSlimError):
    """A FLOPs target below what cutting every prunable channel reaches (with the floors)."""


class CfgError(YoloSlimError):
    """A malformed or unsupported darknet cfg; the message names file and line."""

    def __init__(self, msg: str, path: str | None = None, line: int | None = None):
        where = path or "<cfg>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {msg}")


def cli_main(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a script's main(argv) so user errors print one line and exit with status 2."""

    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except YoloSlimError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except FileNotFoundError as e:
            print(f"error: file not found: {user_path(e.filename) if e.filename else e}", file=sys.stderr)
            return 2
        except OSError as e:  # permission denied, a file where a folder must be, disk full, ...
            # a temp's error names the user's file (user_path)
            where = f"{user_path(e.filename)}: " if e.filename else ""
            print(f"error: {where}{e.strerror or e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (core/process.py)
            signum = getattr(e, "signum", 2)
            note = getattr(e, "note", "")
            print(f"interrupted by {getattr(e, 'name', 'SIGINT')}{'; ' + note if note else ''}",
                  file=sys.stderr)
            return 128 + signum  # the shell's status for a death by that signal

    return wrapped


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write a file via temp + rename so an interrupted write never leaves a half file; the temp
    is named so no glob of the final kind matches it (core/paths: guard_outputs clears the
    ones a killed run left)."""
    if os.path.isdir(path):
        raise YoloSlimError(f"cannot write {path}: it is a directory")
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:  # a failed write (disk full, interrupt) leaves no temp file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


class WriteError(YoloSlimError):
    """An OSError while writing a file (disk full, quota, read-only), as one line."""

    def __init__(self, path: str, e: OSError):
        self.path, self.os_error = path, e
        kept = "the previous file is unchanged" if os.path.exists(path) else "nothing was written"
        super().__init__(f"{path}: {e.strerror or e} while writing it; {kept}")


def write_error(path: str, e: OSError) -> WriteError:
    """The error to raise for `e` while writing `path`: it names the file the user asked for,
    never its temp, and says what is on disk now."""
    return WriteError(path, getattr(e, "os_error", e))


def require_file(path: str, what: str = "file") -> str:
    if not os.path.isfile(path):
        raise YoloSlimError(f"{what} not found: {path}")
    return path
