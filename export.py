#!/usr/bin/env python3
"""Export a model: darknet .weights, .pt, or ONNX (FP32 / INT8): `yolo-slim export`. Flags and
examples: yolo_slim/commands/export.py, or --help."""
from yolo_slim.commands.export import main

if __name__ == "__main__":
    raise SystemExit(main())
