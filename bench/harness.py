"""The benchmark harness: a registry of benchmarks by name, and one way to run any of them.

A benchmark is a function of a `Context` that returns the markdown body of its result; the
harness runs it and writes bench/results/NAME.md: the title, a header saying how, where and when
it ran (the exact command, git commit, machine and instruction sets, runtime versions, date, load
average before and after), then the body. Most benchmarks are a shell command around a script in
bench/ (`shell`); their timing goes through the library's helpers (deploy/runtime.median_ms,
deploy/ort_bench.time_rounds / interleaved_latency, deploy/ort_latency.models_latency), and
`timed` below is the one wrapper the scripts use for a single call's wall and CPU time.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from yolo_slim.core.errors import YoloSlimError, atomic_write_bytes
from yolo_slim.deploy.ort_bench import cpu_isa, load_average
from yolo_slim.deploy.runtime import median_ms

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
RUNTIMES = ("torch", "onnxruntime", "openvino", "ncnn")  # reported when importable


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), wall s, CPU s of this process) of one call. The wall time comes from the library's
    median_ms (one run, no warm-up); the library has no CPU-time helper, so the CPU seconds (every
    thread of this process) are time.process_time around it."""
    out: list[Any] = []
    cpu0 = time.process_time()
    ms = median_ms(lambda: out.append(fn()), 1, 0)
    return out[0], ms / 1e3, time.process_time() - cpu0


@dataclass
class Context:
    """What a benchmark's run function gets: its name, the arguments after `python -m bench
    NAME`, and `sh` to run a command at the repository root (recorded for the header)."""
    name: str
    args: list[str]
    root: Path = ROOT
    ran: list[str] = field(default_factory=list)

    def sh(self, command: str, shown: str | None = None) -> str:
        """Run `command` with bash at the root; its stdout is echoed as it comes and returned.
        A non-zero exit is a one-line error. `shown`: how the header records it."""
        self.ran.append(shown or command)
        proc = subprocess.Popen(["bash", "-c", command], cwd=self.root, stdout=subprocess.PIPE,
                                text=True)
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            sys.stdout.write(line)
            lines.append(line)
        if proc.wait():
            raise YoloSlimError(f"{self.name}: `{shown or command}` exited with status {proc.returncode}")
        return "".join(lines)


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # the result file's title: its section heading in BENCHMARKS.md
    about: str  # one line for `python -m bench list`
    run: Callable[[Context], str]


class Registry(dict):
    """{name: Benchmark}; a name is registered once."""

    def add(self, bench: Benchmark) -> Benchmark:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", bench.name) or bench.name in ("list", "assemble"):
            raise ValueError(f"benchmark name {bench.name!r}: lower-case letters, digits, _; not a command")
        if bench.name in self:
            raise ValueError(f"benchmark {bench.name!r} is registered twice")
        self[bench.name] = bench
        return bench

    def benchmark(self, name: str, title: str, about: str) -> Callable:
        """Decorator: register `fn(ctx) -> markdown body` as a benchmark."""
        def wrap(fn: Callable[[Context], str]) -> Callable[[Context], str]:
            self.add(Benchmark(name, title, about, fn))
            return fn
        return wrap


REGISTRY = Registry()


def shell(command: str, defaults: tuple[str, ...] = (), reads: str | None = None,
          code: bool = False, usage: str = "") -> Callable[[Context], str]:
    """A run function for a benchmark that is one bash command. In `command`, {py} is this
    Python, {args} the arguments given after the name (or `defaults` when none are), {out} a
    temporary file. The body is the file the command writes ({out} when it appears, else
    `reads`), else its stdout; `code`: shown as a code block. `usage`: the arguments are
    required (no defaults), as this example gives them."""
    def run(ctx: Context) -> str:
        args = ctx.args or list(defaults)
        if usage and not args:
            raise YoloSlimError(f"{ctx.name} needs arguments, e.g. python -m bench {ctx.name} {usage}")
        py = os.path.relpath(sys.executable, ctx.root) if sys.executable.startswith(str(ctx.root)) \
            else sys.executable
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out.md")
            cmd = command.replace("{py}", shlex.quote(py)).replace("{args}", shlex.join(args))
            stdout = ctx.sh(cmd.replace("{out}", out), shown=cmd.replace("{out}", "$TMP/out.md"))
            src = out if "{out}" in command else reads and str(ctx.root / reads)
            body = Path(src).read_text() if src else stdout
        return f"```\n{body.strip()}\n```" if code else body
    run.command = command  # type: ignore[attr-defined]  # what it runs, for list and the tests
    return run


def git_commit(root: Path = ROOT) -> str:
    """Short sha of HEAD, '(dirty)' when tracked files differ from it."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True).stdout.strip()
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" (dirty)" if git("status", "--porcelain", "--untracked-files=no") else "")


def runtime_versions() -> str:
    """python and the versions of those RUNTIMES that are importable here."""
    out = [f"python {sys.version.split()[0]}"]
    for name in RUNTIMES:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} (version unknown)")
    return ", ".join(out)


def header(command: str, ran: list[str], load_before: str, load_after: str, when: str,
           root: Path = ROOT) -> str:
    """The header every result file opens with (a blockquote of `- key: value` lines)."""
    cmd = f"`{command}`" + "".join(f"; ran `{c}`" for c in ran)
    rows = [("command", cmd), ("commit", git_commit(root)), ("machine", cpu_isa()["text"]),
            ("runtimes", runtime_versions()), ("date", when),
            ("load average", f"{load_before} before, {load_after} after")]
    return "\n".join(f"> - {k}: {v}" for k, v in rows)


def read_header(text: str) -> dict[str, str]:
    """The `> - key: value` lines of a result file's header."""
    return dict(m.groups() for m in re.finditer(r"^> - ([a-z ]+): (.*)$", text, re.M))


def shift_headings(text: str, by: int) -> str:
    """Every markdown heading `by` levels deeper (negative: higher), code blocks left alone."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            line = "#" * by + line if by > 0 else line[-by:]
        out.append(line)
    return "\n".join(out)


def run_benchmark(bench: Benchmark, args: list[str], results: Path = RESULTS,
                  root: Path = ROOT) -> Path:
    """Run `bench` with `args` and write results/NAME.md: '# title', the header, the body (a
    body with its own '#' title has its headings moved one level down, under this title)."""
    ctx = Context(bench.name, list(args), root)
    load0 = load_average()
    body = bench.run(ctx).strip()
    load1 = load_average()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if re.search(r"^# ", body, re.M):
        body = shift_headings(body, 1)
    command = shlex.join(["python", "-m", "bench", bench.name, *args])
    text = f"# {bench.title}\n\n{header(command, ctx.ran, load0, load1, when, root)}\n\n{body}\n"
    path = Path(results) / f"{bench.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(path), text.encode())
    return path
