#!/usr/bin/env python3
"""Evaluate a detector on a .data file: P, R, mAP: `yolo-slim evaluate`. Flags and examples:
yolo_slim/commands/evaluate.py, or --help."""
from yolo_slim.commands.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
