"""Device choice, mixed precision (fp16 on CUDA, bf16 on CPUs with it), loader processes and
DistributedDataParallel plumbing for the training engine.

Launch with `torchrun --nproc_per_node N train_sparse.py ...`: torchrun sets RANK, WORLD_SIZE
and LOCAL_RANK; we use nccl on CUDA and gloo on CPU. Rank 0 alone writes files.
"""
from __future__ import annotations

import functools
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from yolo_slim.core.errors import YoloSlimError


def ddp_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (-1, 1, -1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return -1, 1, -1
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def select_device(spec: str = "", local_rank: int = -1) -> torch.device:
    """'' picks CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' or 'N' are explicit.
    Under DDP on CUDA each process takes cuda:LOCAL_RANK."""
    spec = (spec or "").strip().lower()
    if spec == "cpu" or (not spec and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise YoloSlimError(f"--device {spec}: CUDA is not available on this machine (use cpu)")
    if local_rank >= 0:
        idx = local_rank
    elif spec in ("", "cuda"):
        idx = 0
    else:
        idx_s = spec.split(":", 1)[1] if spec.startswith("cuda:") else spec
        if not idx_s.isdigit():
            raise YoloSlimError(f"--device {spec}: expected cpu, cuda, cuda:N or N")
        idx = int(idx_s)
    if idx >= torch.cuda.device_count():
        raise YoloSlimError(f"--device {spec}: only {torch.cuda.device_count()} CUDA devices")
    torch.cuda.set_device(idx)
    return torch.device("cuda", idx)


@functools.lru_cache(maxsize=None)  # the CPU does not change within a process
def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX): there oneDNN runs bf16
    convolutions ~2x faster than fp32; elsewhere bf16 is emulated and slower, so it stays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def auto_workers(device: torch.device | str, requested: int = -1) -> int:
    """Loader processes: `requested` when >= 0; else 0 on a CPU-trained machine with <= 4 cores
    (measured on 2 cores, demo epoch: 0 workers 34 s, 1 worker 38 s, 2 workers 43 s: the
    processes take the cores the convolutions need, and with 0 the decoded images stay cached),
    a quarter of the cores on bigger CPU machines, up to 8 when a GPU does the maths."""
    if requested >= 0:
        return requested
    # the cores this process may run on (taskset, containers), shared by torchrun's local ranks
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpus = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if torch.device(device).type == "cuda":
        return min(8, cpus)
    return 0 if cpus <= 4 else min(8, cpus // 4)


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype of mixed-precision training: fp16 on CUDA (with a GradScaler), bf16 on
    CPUs with native bf16 (same exponent range as fp32: no scaler), None = full fp32."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and os.environ.get("YOLO_SLIM_CPU_BF16", "1") != "0" and cpu_has_bf16():
        return torch.bfloat16
    return None


def init_distributed(device: torch.device, world: int) -> None:
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def all_finite(x: torch.Tensor, world: int) -> bool:
    """True when x is finite on every rank, so all ranks stop together on a bad loss."""
    ok = torch.tensor([float(torch.isfinite(x).all())], device=x.device)
    if world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Torch, numpy and python RNG states in a form torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
