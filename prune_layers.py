#!/usr/bin/env python3
"""Layer pruning: remove residual blocks, optionally channels in the same run: `yolo-slim prune-
layers`. Flags and examples: yolo_slim/commands/prune_layers.py, or --help."""
from yolo_slim.commands.prune_layers import main

if __name__ == "__main__":
    raise SystemExit(main())
