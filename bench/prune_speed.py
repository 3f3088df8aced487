"""CPU cost of one verified channel prune: yolov3-spp at its cfg size (608), random weights with
half the |γ| exactly zero, --global-percent 0.5 (issue 11's case).

Measures CPU seconds (every thread of this process) and wall seconds (bench.harness.timed) of the
whole `prune_channels` job in process — load .weights, graph, masks, fold, compact, verification
(three forwards at the small verification size), write cfg/weights/pt/report/PNGs, reload check —
and the same steps one by one. The reference the issue measured on this machine type:
tanluren's slim-prune steps (masks, merge, keep-size folding, compact, write; no verification)
take 6.3 s of CPU.

  .venv/bin/python bench/prune_speed.py [--cfg ../shared/darknet-cfg/AlexeyAB/yolov3-spp.cfg]
  git worktree add /tmp/old f1442ef && .venv/bin/python bench/prune_speed.py --baseline-src /tmp/old

With --baseline-src (a checkout of an older commit), the two versions' `prune_channels.py` run as
separate processes, alternating old/new, each timed by its own CPU (getrusage of the child:
python + torch start-up, load, prune, write) on the same .weights file.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from netgen import randomize_bn  # noqa: E402

from bench.harness import timed  # noqa: E402

from yolo_slim.nn.weights import load_model, save_darknet_weights  # noqa: E402
from yolo_slim.nn.model import build_model  # noqa: E402
from yolo_slim.prune.channels import PruneOptions  # noqa: E402
from yolo_slim.prune.pipeline import PrunePlan, prune, run  # noqa: E402


def script_cpu(src: Path, cfg: str, wts: str, out: str, threads: int) -> tuple[float, float]:
    """(CPU s, wall s) of one `prune_channels.py` process of the checkout `src`."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _, wall, _ = timed(lambda: subprocess.run(
        [sys.executable, str(src / "prune_channels.py"), "--cfg", cfg, "--weights", wts,
         "--output-dir", out, "--global-percent", "0.5"], env=env, check=True,
        capture_output=True, cwd=str(src)))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cfg", default=str(ROOT.parent / "shared/darknet-cfg/AlexeyAB/yolov3-spp.cfg"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-src", type=Path, help="checkout of an older commit to compare with")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(a.cfg).eval()
    randomize_bn(model, 0, zero_fraction=0.5)
    opts = PruneOptions(global_percent=0.5)
    print(f"# Verified channel prune: {Path(a.cfg).name} at its cfg size, half the |γ| zero, "
          f"--global-percent 0.5\n\ntorch {torch.__version__}, {a.threads} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        wts = os.path.join(tmp, "in.weights")
        save_darknet_weights(model, wts)
        print("| run | CPU s | wall s |\n|---|---|---|")
        for k in range(a.repeats):
            rep, w, c = timed(lambda: run(a.cfg, wts, os.path.join(tmp, f"o{k}"), PrunePlan(channels=opts),
                                          log=lambda *x: None))
            print(f"| whole prune_channels job {k + 1} | {c:.2f} | {w:.2f} |", flush=True)
        v = rep["verification"]
        print(f"\nverified at {v['img_size'][0]}x{v['img_size'][1]}: max |Δ| compact vs folded "
              f"{v['max_abs_vs_folded']:.2g}, vs masked (border gap) {v['max_abs_vs_masked_unfolded']:.2g}, "
              f"reloaded files {v['max_abs_reloaded']:.2g}; params {rep['params']['after'] / rep['params']['before']:.3f}, "
              f"FLOPs {rep['flops']['after'] / rep['flops']['before']:.3f} kept\n")
        if a.baseline_src:
            runs: dict[str, list[tuple[float, float]]] = {"baseline": [], "this tree": []}
            for k in range(a.repeats):  # alternating, so both see the same machine load
                for name, src in (("baseline", a.baseline_src), ("this tree", ROOT)):
                    runs[name].append(script_cpu(src, a.cfg, wts, os.path.join(tmp, f"{name[0]}{k}"),
                                                 a.threads))
            print(f"| prune_channels.py process ({a.repeats} runs, alternating) | median CPU s | "
                  "median wall s |\n|---|---|---|")
            for name, r in runs.items():
                label = f"{name} ({a.baseline_src})" if name == "baseline" else name
                print(f"| {label} | {statistics.median(c for c, _ in r):.2f} | "
                      f"{statistics.median(w for _, w in r):.2f} |")
            print()
        m, w0, c0 = timed(lambda: load_model(a.cfg, wts))
        _, w1, c1 = timed(lambda: prune(m, PrunePlan(channels=opts), log=lambda *x: None))
        print("| step (one more run) | CPU s | wall s |\n|---|---|---|")
        for name, c, w in (("load cfg + .weights", c0, w0), ("graph, masks, fold, compact, verify", c1, w1)):
            print(f"| {name} | {c:.2f} | {w:.2f} |")


if __name__ == "__main__":
    main()
