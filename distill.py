#!/usr/bin/env python3
"""Fine-tune a pruned student, optionally distilling from a frozen teacher: `yolo-slim distill`.
Flags and examples: yolo_slim/commands/distill.py, or --help."""
from yolo_slim.commands.distill import main

if __name__ == "__main__":
    raise SystemExit(main())
