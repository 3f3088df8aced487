"""The process around a run: one run per output folder (a lock file), and SIGTERM/SIGHUP
stopping a run the way Ctrl-C does.

`run_lock(folder)` creates `<folder>/.run.lock` holding `pid host start-time`, atomically
(O_EXCL), and removes it when the run ends however it ends. A second run on the folder is
refused with one line naming the first one's pid; a lock whose process is gone (kill -9, a
crash, a reboot) is taken over. The start time (Linux /proc) tells a reused pid from the run
that made the lock.

`stop_on_signals()` makes SIGTERM (kill, a batch scheduler, `docker stop`) and SIGHUP (the
terminal closed) raise `Interrupted`, a KeyboardInterrupt: the run unwinds as on Ctrl-C, atomic
writes remove their temps, and core.errors.cli_main exits with 128 + the signal's number (130
Ctrl-C, 143 SIGTERM, 129 SIGHUP), as a shell reports a death by that signal. A signal that was
ignored when the run started (SIGHUP under nohup) stays ignored. Inside `deferred()` a signal
waits until the block ends, so files written together (a checkpoint set) are all written.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from typing import Iterator

from yolo_slim.core.errors import YoloSlimError

LOCK_NAME = ".run.lock"
_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; `note` says what was kept (set by whoever knows)."""

    def __init__(self, signum: int):
        self.signum, self.name, self.note = signum, signal.Signals(signum).name, ""
        super().__init__(self.name)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is not there)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder(path: str) -> tuple[int, str, str] | None:
    """(pid, host, start time) written in a lock file, None when it cannot be read."""
    try:
        with open(path) as f:
            parts = f.read().split()
        return int(parts[0]), (parts[1:2] or [""])[0], (parts[2:3] or [""])[0]
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int, host: str, started: str) -> bool:
    if host and host != socket.gethostname():
        return True  # another machine's run (a shared disk): cannot tell, so assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    return not started or not _start_time(pid) or _start_time(pid) == started


@contextlib.contextmanager
def run_lock(folder: str) -> Iterator[str]:
    """Hold `<folder>/.run.lock` for the block (the folder is created); see the module doc."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    me = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}\n"
    for _ in range(3):  # a stale lock is removed and the creation tried again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            held = _holder(path)
            if held is None or _running(*held):
                who = f"pid {held[0]}" + (f" on {held[1]}" if held[1] else "") if held else "a run"
                raise YoloSlimError(f"{folder} is in use by another run ({who}, {path}); wait for "
                                    "it or choose another --output-dir (a lock left by a "
                                    "finished run may be deleted)") from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:
        raise YoloSlimError(f"{folder}: could not take {path}; another run keeps taking it")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            with open(path) as f:
                mine = f.read() == me  # never remove a lock another run took over
            if mine:
                os.remove(path)


_state = threading.local()


def _handler(signum: int, frame) -> None:
    if getattr(_state, "deferring", 0):
        _state.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise Interrupted inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for name in _SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside the block is raised when the block is done."""
    _state.deferring = getattr(_state, "deferring", 0) + 1
    _state.pending = getattr(_state, "pending", None)
    try:
        yield
    finally:
        _state.deferring -= 1
        if not _state.deferring and _state.pending is not None:
            pending, _state.pending = _state.pending, None
            raise Interrupted(pending)
