#!/usr/bin/env python3
"""Training benchmarks for bench/results/training.md.

  throughput: images/s of the training step (forward + loss + backward + SGD step) for a cfg
              at --img-size and --batch-size, fed by the real augmented loader, after warm-up.
  train:      a full baseline run (train_sparse.py flags after `--`); prints wall time and the
              best mAP@0.5 / mAP@0.5:0.95 read from its results.csv.

  python bench/train_bench.py throughput --cfg cfg/demo.cfg --data data/shapes/shapes.data
  python bench/train_bench.py train -- --cfg cfg/demo.cfg --data data/shapes/shapes.data ...
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.harness import timed  # noqa: E402


def throughput(a: argparse.Namespace) -> None:
    from yolo_slim.data.dataset import Augment, create_dataloader, parse_data_file
    from yolo_slim.train.loss import LossHyp, yolo_loss
    from yolo_slim.nn.model import build_model
    from yolo_slim.train.optim import build_optimizer
    torch.manual_seed(0)
    model = build_model(a.cfg).train()
    opt = build_optimizer(model, 0.001, 0.9, 5e-4)
    data = parse_data_file(a.data)
    loader, _ = create_dataloader(data.train, a.img_size, a.batch_size, True, workers=a.workers,
                                  nc=data.classes, aug=Augment(mosaic=a.mosaic))
    it = iter(loader)

    def steps(k: int) -> int:
        """k training steps; the number of images they took."""
        n = 0
        for _ in range(k):
            imgs, targets, _, _ = next(it)
            loss, _ = yolo_loss(model(imgs), targets, model, tuple(imgs.shape[-2:]), LossHyp())
            loss.backward()
            opt.step()
            opt.zero_grad()
            n += imgs.shape[0]
        return n
    steps(a.warmup)
    n, dt, cpu = timed(lambda: steps(a.steps))
    # CPU seconds of this process (all its threads, not the loader workers): on a shared
    # machine images per CPU-second is the number that does not depend on the other jobs
    print(f"{a.cfg} {a.img_size}px batch {a.batch_size} workers {a.workers} threads "
          f"{torch.get_num_threads()}: {n / dt:.2f} images/s wall, {n / cpu:.2f} images per "
          f"CPU-second of the training process ({a.steps} steps, {dt:.1f} s wall, {cpu:.1f} s CPU)")


def train(rest: list[str]) -> None:
    from yolo_slim.train.engine import TrainConfig, train as run
    from yolo_slim.nn.model import build_model
    p = argparse.ArgumentParser()
    TrainConfig.add_args(p)
    cfg = TrainConfig.from_args(p.parse_args(rest))
    torch.manual_seed(cfg.seed)
    _, wall, _ = timed(lambda: run(cfg, build_model(cfg.cfg)))
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(r.ru_utime + r.ru_stime for r in ru)  # trainer + (finished) loader workers
    with open(os.path.join(cfg.output_dir, "results.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("map50")]
    best = max(rows, key=lambda r: float(r["map50"]))
    print(f"wall {wall:.0f} s ({wall / 60:.1f} min), CPU {cpu:.0f} s, threads {torch.get_num_threads()}; best "
          f"mAP@0.5 {float(best['map50']):.4f} mAP@0.5:0.95 {float(best['map']):.4f} at epoch "
          f"{best['epoch']}; last {float(rows[-1]['map50']):.4f} / {float(rows[-1]['map']):.4f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        rest = sys.argv[2:]
        return train(rest[1:] if rest[:1] == ["--"] else rest)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["throughput"])
    p.add_argument("--cfg", default="cfg/demo.cfg")
    p.add_argument("--data", default="data/shapes/shapes.data")
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--mosaic", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    throughput(p.parse_args())


if __name__ == "__main__":
    main()
