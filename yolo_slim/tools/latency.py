"""The latency table of a cfg on one of this machine's runtimes, measured once and cached, and
the measured latency of a pruning run's models: the timers of deploy/ort_latency.py (any
runtime of deploy/backends.py) wired to the table (analysis/latency.py) and to the pruning
pipeline (prune/pipeline.py takes them as callables, because prune/ sits below deploy/). A
table records its runtime; the measured latency of a cut is timed on the table's runtime.

  python -m yolo_slim.tools.latency --cfg cfg/yolov3-tiny.cfg --img-size 416 [--threads 2] \
      [--batch 1] [--runtime onnxruntime|openvino|ncnn] [--out table.json] [--plot latency.png]

The cache is one JSON file per (cfg text, size, batch, runtime, threads, machine, grid) under
$YOLO_SLIM_CACHE or ~/.cache/yolo-slim/latency/; the file name says what it is for, and
python -m yolo_slim.analysis.latency FILE prints one.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from yolo_slim.analysis.latency import LatencyTable, measure_table, plot_latency_flops, table_text
from yolo_slim.core.cli import Parser, add_dataclass_args, parse
from yolo_slim.core.errors import cli_main
from yolo_slim.darknet.cfg import net_size, parse_cfg
from yolo_slim.deploy.ort_bench import cpu_isa
from yolo_slim.deploy.backends import NAMES, backend, canonical
from yolo_slim.deploy.ort_latency import STATS, ConvTimer, is_ort, models_latency
from yolo_slim.deploy.runtime import RUNTIMES
from yolo_slim.nn.model import Darknet


def _defs(cfg: str) -> list[dict[str, Any]]:
    """module_defs of a cfg, or of the cfg a yolo-slim .pt (or .weights with no cfg: error) carries."""
    if cfg.endswith(".pt"):
        from yolo_slim.nn.weights import load_model
        return load_model(None, cfg).module_defs
    return parse_cfg(cfg, warn=False)


def cache_dir() -> str:
    return os.environ.get("YOLO_SLIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "yolo-slim", "latency")


def machine(runtime: str = "onnxruntime-cpu") -> dict[str, Any]:
    """The CPU, and the version of the runtime that times on it (onnxruntime's always: a table
    cached before other runtimes keeps its key)."""
    import onnxruntime
    isa = cpu_isa()
    out = {"cpu": isa["cpu"], "cores": isa["cores"], "onnxruntime": onnxruntime.__version__,
           "avx512f": isa["isa"]["AVX-512F"]}
    if not is_ort(runtime):
        out[canonical(runtime)] = backend(runtime).version()
    return out


def table_runtime(runtime: str) -> str:
    """The name a table records and is cached under: onnxruntime on the CPU is onnxruntime-cpu,
    as every table measured before other runtimes says."""
    return "onnxruntime-cpu" if canonical(runtime) == "onnxruntime" else runtime


# bumped whenever what a table measures changes (the export of a section, the timing harness):
# a table cached by an older version is measured again instead of reused
TABLE_VERSION = 6  # 3: two-point calibration; 5: the narrow grid point (ncnn); 6: the floor at half


def table_path(cfg: str, img_hw: tuple[int, int], batch: int, runtime: str, threads: int | None,
               steps: int, align: int, stat: str = "median") -> str:
    defs = [{k: v for k, v in d.items() if not k.startswith("_")} for d in _defs(cfg)]
    runtime = table_runtime(runtime)
    key = json.dumps([defs, list(img_hw), batch, runtime, threads, machine(runtime), steps, align,
                      stat, TABLE_VERSION], sort_keys=True)
    h = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(cfg))[0]
    return os.path.join(cache_dir(), f"{stem}_{img_hw[0]}x{img_hw[1]}_b{batch}_{runtime}_"
                                     f"t{threads or 'auto'}_{stat}_{h}.json")


def ensure_table(cfg: str, img_hw: tuple[int, int] | None = None, batch: int = 1,
                 runtime: str = "onnxruntime-cpu", threads: int | None = 2, steps: int = 4,
                 align: int | None = None, runs: int = 7, stat: str = "min", refresh: bool = False,
                 log: Callable[[str], None] = print) -> str:
    """Path of the cached table for these settings, measured now if absent (or refresh)."""
    defs = _defs(cfg)
    hw = tuple(img_hw or net_size(defs))
    align = align or (16 if machine()["avx512f"] else 8)  # MLAS's NCHWc block: 16 floats on AVX-512
    path = table_path(cfg, hw, batch, runtime, threads, steps, align, stat)
    # the same architecture under another file name (a run's best.pt for cfg/demo.cfg) has the
    # same key: the name before it is only for people reading the cache folder
    same = sorted(glob.glob(os.path.join(os.path.dirname(path), "*" + path[path.rindex("_"):])))
    if same and not refresh:
        path = path if path in same else same[0]
        log(f"latency table: {path} (cached)")
        return path
    t0 = time.time()
    log(f"latency table: measuring every conv of {cfg} at {hw[0]}x{hw[1]}, batch {batch}, "
        f"{runtime}, {threads or 'auto'} threads (load average {_load()})")
    timer = ConvTimer(runtime, threads, runs=runs, stat=stat)
    narrow = floor_defs(defs, hw)
    both = models_latency({"full": Darknet(defs).eval(), "floor": Darknet(narrow).eval()}, hw, batch,
                          threads, rounds=3 * runs, runtime=runtime)
    full = both["full"][f"{stat}_ms"]
    floor = (narrow, both["floor"][f"{stat}_ms"]) if "floor" in both else None
    table = measure_table(defs, hw, timer, batch, steps, align,
                          meta={"cfg": cfg, "runtime": table_runtime(runtime), "threads": threads,
                                "runs": runs, "stat": stat, "machine": machine(runtime),
                                "precision": timer.precision, "load_average": _load(),
                                "measured": time.strftime("%Y-%m-%d %H:%M:%S")},
                          overhead_ms=timer.empty_ms(), full_ms=full, floor=floor,
                          narrow=narrow_pays(runtime))
    table.meta["seconds"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table.save(path)
    log(f"latency table: {path} ({table.meta['seconds']:.0f} s)")
    return path


def narrow_pays(runtime: str) -> bool:
    """Whether the runtime packs fewer channels than its block (its backend's NARROW)."""
    return False if is_ort(runtime) else bool(getattr(backend(runtime), "NARROW", False))


def floor_defs(defs: list[dict[str, Any]], hw: tuple[int, int], keep: float = 0.5) -> list[dict[str, Any]]:
    """The table's second calibration model: every prunable conv (strategy slim) cut to about
    `keep` of its channels, evenly over layers (equal scores: the pruner cuts ties evenly), as
    the pruner would write it. Half, where real cuts are (2-3x): with a quarter, the line fit
    the ends but under-predicted a 3x cut of the demo model on onnxruntime by 20% (2.02 ms
    predicted, 2.53 measured) and the sparse target stopped at 2.76x."""
    from yolo_slim.analysis.graph import build_graph
    from yolo_slim.prune.compact import compact_defs
    from yolo_slim.prune.masks import MaskSolver
    g = build_graph(defs)
    solver = MaskSolver(g, np.ones(len(g.root)), "slim", 0.0, 1, hw)
    n_cut = int(round((1 - keep) * len(solver.deciders)))
    return compact_defs(g, solver.keep(math.inf, n_cut=n_cut))


def measure_hook(threads: int | None = 2, batch: int = 1, rounds: int = 30,
                 runtime: str = "onnxruntime-cpu"):
    """A `measure(models, img_hw)` for prune/pipeline.run: the models exported for `runtime` and
    timed interleaved in one run there."""
    def measure(models: dict[str, Darknet], img_hw: tuple[int, int]) -> dict[str, Any]:
        out = models_latency(models, img_hw, batch, threads, rounds, ref=next(iter(models)),
                             runtime=runtime)
        return {"models": out, "threads": threads, "batch": batch, "rounds": rounds,
                "load_average": _load(), "runtime": table_runtime(runtime)}
    return measure


def table_runtime_of(table: str) -> str:
    return LatencyTable.load(table).meta.get("runtime", "onnxruntime-cpu")


def table_measure_hook(table: str, rounds: int = 30, threads: int | None = None):
    """measure_hook on the runtime, threads (unless given) and batch the table was measured with."""
    meta = LatencyTable.load(table).meta
    return measure_hook(threads or meta.get("threads") or 2, meta.get("batch", 1), rounds,
                        meta.get("runtime", "onnxruntime-cpu"))


def sparse_hooks(cfg, model: Darknet, resumed: bool = False) -> list:
    """The sparsity hooks of train_sparse.py / distill.py --sr: the latency table measured now
    or taken from the cache when the penalty or a latency target needs one (opt.json keeps its
    path, so --resume reads the same table), and the runtime timer of latency targets."""
    from yolo_slim.train.sparse_setup import make_train_hooks
    if not cfg.sr:
        return []
    target = cfg.target_speedup or cfg.target_latency
    if (cfg.sparsity_weight == "latency" or target) and not cfg.latency_table and not resumed:
        cfg.latency_table = ensure_table(cfg.cfg or cfg.weights,
                                         (cfg.img_size,) * 2 if cfg.img_size else None,
                                         runtime=getattr(cfg, "runtime", "onnxruntime-cpu"))
    return list(make_train_hooks(cfg, model, table_measure_hook(cfg.latency_table) if target else None))


def for_script(a, opts):
    """The pruning scripts' latency wiring: (PruneOptions with the table, measure hook, table
    path), the table measured or taken from the cache, when a latency target or
    --latency-report asks for it; else (opts, None, None)."""
    from dataclasses import replace
    if not (getattr(a, "target_latency", None) or getattr(a, "target_speedup", None)
            or getattr(a, "latency_report", False)):
        return opts, None, None
    hw = (a.img_size, a.img_size) if a.img_size else None
    path = a.latency_table or ensure_table(a.cfg or a.weights, hw, threads=a.latency_threads,
                                           runtime=getattr(a, "runtime", "onnxruntime-cpu"))
    opts = replace(opts, latency_table=path) if opts is not None else None
    return opts, table_measure_hook(path, threads=a.latency_threads), path


def _load() -> str:
    from yolo_slim.deploy.ort_bench import load_average
    return load_average()


@dataclass
class LatencyFlags:
    """Every flag of python -m yolo_slim.tools.latency."""
    cfg: str | None = field(default=None, metadata={"type": str})
    img_size: int | None = field(default=None, metadata={"type": int, "min": 1})
    batch: int = field(default=1, metadata={"min": 1})
    threads: int = field(default=2, metadata={"min": 1})
    runtime: str = field(default="onnxruntime-cpu", metadata={
        "choices": list(dict.fromkeys([*NAMES, *RUNTIMES])),
        "help": "onnxruntime (= onnxruntime-cpu), openvino, ncnn, or onnxruntime on a GPU"})
    steps: int = field(default=4, metadata={"min": 1, "help": "grid points per axis"})
    runs: int = field(default=7, metadata={"min": 1, "help": "timed runs per point (median)"})
    stat: str = field(default="min", metadata={
        "choices": list(STATS), "help": "per point: the fastest of the runs (robust on a shared "
                                        "machine) or their median"})
    out: str | None = field(default=None, metadata={"type": str, "help": "also copy the table here"})
    plot: str | None = field(default=None, metadata={
        "type": str, "help": "PNG: per conv, share of FLOPs vs share of latency"})
    refresh: bool = field(default=False, metadata={"switch": True, "help": "measure again even if cached"})


def main(argv: list[str] | None = None) -> int:
    @cli_main
    def run(args) -> int:
        p = Parser(prog="python -m yolo_slim.tools.latency", description=__doc__)
        add_dataclass_args(p, LatencyFlags, required=("cfg",))
        a = parse(p, args)
        if a is None:
            return 0
        hw = (a.img_size, a.img_size) if a.img_size else None
        path = ensure_table(a.cfg, hw, a.batch, a.runtime, a.threads, a.steps, runs=a.runs,
                            stat=a.stat, refresh=a.refresh)
        table = LatencyTable.load(path)
        print(table_text(table))
        if a.out:
            shutil.copyfile(path, a.out)
        if a.plot:
            plot_latency_flops(parse_cfg(a.cfg, warn=False), table, a.plot, title=os.path.basename(a.cfg))
        return 0
    return run(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
