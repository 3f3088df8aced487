"""python -m bench list                 the registered benchmarks, one line each
python -m bench NAME [args]          run one; writes bench/results/NAME.md (header + result)
python -m bench assemble [--check]   BENCHMARKS.md from bench/results/ (--check: is it current?)
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Sequence

from bench.assemble import assemble
from bench.harness import REGISTRY, RESULTS, Registry, run_benchmark
from yolo_slim.core.errors import YoloSlimError, cli_main


def main(argv: Sequence[str] | None = None, registry: Registry | None = None,
         results: Path = RESULTS) -> int:
    """The command line; errors are one line and exit status 2. `registry` (default: the
    registered benchmarks) and `results` are for the tests."""
    if registry is None:
        import bench.suite  # noqa: F401  (registers the benchmarks in REGISTRY)
        registry = REGISTRY
    return cli_main(functools.partial(dispatch, registry=registry, results=results))(argv)


def dispatch(argv: Sequence[str] | None, registry: Registry, results: Path) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "list":
        width = max(map(len, registry), default=0)
        for name, b in registry.items():
            done = "" if (results / f"{name}.md").is_file() else "  (no result yet)"
            print(f"{name:<{width}}  {b.about}{done}")
        return 0
    if cmd == "assemble":
        if rest not in ([], ["--check"]):
            raise YoloSlimError(f"assemble takes only --check, got {' '.join(rest)}")
        return assemble(check=bool(rest))
    if cmd not in registry:
        raise YoloSlimError(f"unknown benchmark {cmd!r} (python -m bench list shows them)")
    path = run_benchmark(registry[cmd], rest, results)
    print(f"wrote {path}; python -m bench assemble puts it into BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
