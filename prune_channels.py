#!/usr/bin/env python3
"""Channel pruning by BN |γ| (or --importance l1|rank) with exact β folding: `yolo-slim prune`.
Flags and examples: yolo_slim/commands/prune.py, or --help."""
from yolo_slim.commands.prune import main

if __name__ == "__main__":
    raise SystemExit(main())
