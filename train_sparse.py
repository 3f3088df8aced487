#!/usr/bin/env python3
"""Train a darknet-cfg YOLO detector; with --sr, sparsity training: `yolo-slim train`. Flags and
examples: yolo_slim/commands/train.py, or --help."""
from yolo_slim.commands.train import main

if __name__ == "__main__":
    raise SystemExit(main())
