#!/usr/bin/env python3
"""Assemble BENCHMARKS.md from the per-topic results in bench/results/*.md (each written by its
bench script with the command, machine and date), in pipeline order."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = [("demo.md", "The demo pipeline end to end (`make demo`)"),
         ("training.md", "Baseline training (issue: training engine)"),
         ("sparsity.md", "Sparse training schedules"),
         ("prune.md", "Channel pruning"),
         ("prune_speed.md", "Verified channel-pruning speed"),
         ("layer_prune.md", "Layer pruning"),
         ("distill.md", "Fine-tuning with distillation"),
         ("latency.md", "ONNX / PyTorch CPU latency"),
         ("beyond.md", "Importance criteria, sensitivity, iterative and unstructured pruning")]


def demote(text: str) -> str:
    """Every heading one level down, so each fragment sits under its own section."""
    return "\n".join("#" + l if l.startswith("#") else l for l in text.splitlines())


def main() -> None:
    parts = ["# Benchmarks", "",
             "Every number below was measured by a script in `bench/` (or `make demo`); each section "
             "gives its exact command, machine and date. Speed comparisons are side by side in one "
             "run. The development machine has 2 CPU cores and no GPU; where other jobs shared it "
             "during a run, the section says so and its timings are upper bounds.", ""]
    for name, title in ORDER:
        path = os.path.join(ROOT, "bench", "results", name)
        if os.path.isfile(path):
            with open(path) as f:
                body = f.read().strip()
            if body.startswith("# "):
                body = body.split("\n", 1)[1] if "\n" in body else ""
            parts += [f"## {title}", "", demote(body.strip()), ""]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(parts))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
