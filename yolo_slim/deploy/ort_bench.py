"""Latency of several shipped files measured side by side, each in the runtime its suffix names
(.onnx onnxruntime, .xml OpenVINO, .param ncnn: deploy/backends.py), and the CPU's instruction
sets that decide whether INT8 pays off.

Files are timed interleaved: every round runs each file, in an order rotated per round, so a
burst of load from another process hits all of them alike; the per-file median and spread
(25th-75th percentile) and the per-round ratio to a reference file come from the same rounds.
On a shared machine the absolute numbers move; the ratios are what to read.

Two things make side-by-side timing in one process differ from a deployed model running
alone, and both are removed: onnxruntime's idle threads spin after a run (measured: two
sessions interleaved on 2 cores took 2.4x and 1.8x their time alone), so every session stops
spinning when its run returns (OpenVINO and ncnn have no such switch: their thread pools are
left as they are); and the previous file's run leaves its own weights in the
caches, so each timed run follows an untimed run of the same file (a deployed model runs back
to back). With both, interleaved times match each file timed alone within noise (BENCHMARKS.md).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np

from yolo_slim.deploy.backends import backend_for_file

# flags in /proc/cpuinfo that matter for INT8 GEMM/conv kernels
ISA_FLAGS = [("avx2", "AVX2"), ("avx512f", "AVX-512F"), ("avx512_vnni", "AVX512-VNNI"),
             ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8")]


def cpu_isa() -> dict[str, Any]:
    """CPU model name and which of ISA_FLAGS it has (Linux /proc/cpuinfo; else unknown)."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = val.strip()
                elif key.strip() == "flags":
                    flags = set(val.split())
                    break
    except OSError:
        pass
    name = name or platform.processor() or "unknown CPU"
    has = {label: flag in flags for flag, label in ISA_FLAGS}
    vnni = has["AVX512-VNNI"] or has["AVX-VNNI"]
    return {"cpu": name, "cores": os.cpu_count(), "isa": has, "vnni": vnni,
            "text": f"{name}, {os.cpu_count()} cores visible; "
                    + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in has.items())}


def interleaved_latency(paths: dict[str, str], img_hw: tuple[int, int], batch: int = 1,
                        rounds: int = 50, warmup: int = 5, threads: int | None = None,
                        ref: str | None = None, runtime: str | None = None) -> dict[str, dict[str, float]]:
    """{name: {median_ms, p25_ms, p75_ms, min_ms, ratio_median}}; ratio_median is the median
    over rounds of (this file's time / `ref`'s time in the same round)."""
    return latency_stats(time_rounds(paths, img_hw, batch, rounds, warmup, threads, runtime), ref)


def file_runner(path: str, threads: int | None = None,
                runtime: str | None = None) -> Callable[[np.ndarray], Any]:
    """A shipped file loaded for timing by the backend of its suffix; `runtime` names onnxruntime
    on a GPU (runtime.RUNTIMES) for an .onnx file, which is no backend of its own."""
    from yolo_slim.deploy.runtime import RUNTIMES, ort_session
    if runtime in RUNTIMES and runtime != "onnxruntime-cpu":
        s = ort_session(path, threads, stop_spinning=True, runtime=runtime)
        name = s.get_inputs()[0].name
        return lambda x: s.run(None, {name: x})
    return backend_for_file(path).load(path, threads)  # onnxruntime: spinning stops after a run


def time_rounds(paths: dict[str, str], img_hw: tuple[int, int], batch: int = 1,
                rounds: int = 50, warmup: int = 5, threads: int | None = None,
                runtime: str | None = None) -> dict[str, list[float]]:
    """{name: [ms of each round]}, the files timed interleaved; round r of every file comes from
    the same pass, so per-round ratios between any two files can be taken afterwards."""
    runners = {k: file_runner(p, threads, runtime) for k, p in paths.items()}
    names = list(runners)
    feed = np.random.default_rng(0).random((batch, 3, *img_hw), dtype=np.float32)

    def run(k: str) -> float:
        runners[k](feed)  # warm: this file's weights in the caches
        t = time.perf_counter()
        runners[k](feed)
        return (time.perf_counter() - t) * 1e3

    for _ in range(warmup):
        for k in names:
            run(k)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            times[k].append(run(k))
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[r] / b[r]: what load moves, it moves for both within a round."""
    return statistics.median(x / y for x, y in zip(a, b))


def latency_stats(times: dict[str, list[float]], ref: str | None = None) -> dict[str, dict[str, float]]:
    """time_rounds' rounds -> {name: {median_ms, p25_ms, p75_ms, min_ms, ratio_median}} (ratio to
    `ref`, default the first name)."""
    ref = ref or next(iter(times))
    out = {}
    for k, t in times.items():
        q = np.percentile(t, [25, 75])
        out[k] = {"median_ms": statistics.median(t), "p25_ms": float(q[0]), "p75_ms": float(q[1]),
                  "min_ms": min(t), "ratio_median": median_ratio(t, times[ref])}
    return out


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"
