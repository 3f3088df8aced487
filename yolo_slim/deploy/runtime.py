"""onnxruntime sessions and wall-time medians: the one place a session is built, for the export
check, evaluation, INT8 parity and every latency measurement."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from yolo_slim.core.errors import YoloSlimError

RUNTIMES = {"onnxruntime-cpu": ["CPUExecutionProvider"],
            "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                     "CPUExecutionProvider"]}


def ort_session(model: str | bytes, threads: int | None = None, stop_spinning: bool = False,
                runtime: str = "onnxruntime-cpu"):
    """An onnxruntime session of a file (or serialized model) on `runtime`, `threads` intra-op
    threads (None: onnxruntime's choice), errors only in the log. `stop_spinning`: the thread
    pool still spins during a run (as deployed) but stops when the run returns — for sessions
    timed side by side in one process, where the idle threads of one would otherwise spin on the
    cores the next one is timed on."""
    import onnxruntime as ort
    if runtime not in RUNTIMES:
        raise YoloSlimError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime}")
    if RUNTIMES[runtime][0] not in ort.get_available_providers():
        raise YoloSlimError(f"--runtime {runtime}: onnxruntime here has no {RUNTIMES[runtime][0]} "
                            f"(available: {', '.join(ort.get_available_providers())})")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if stop_spinning:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model, so, providers=RUNTIMES[runtime])


def median_ms(fn: Callable[[], Any], runs: int, warmup: int) -> float:
    """Median wall time of `fn()` in ms over `runs` calls, after `warmup` untimed calls (the
    median, not the mean: one preempted call on a shared machine must not move the number)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
