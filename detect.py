#!/usr/bin/env python3
"""Draw a detector's boxes on images: `yolo-slim detect`. Flags and examples:
yolo_slim/commands/detect.py, or --help."""
from yolo_slim.commands.detect import main

if __name__ == "__main__":
    raise SystemExit(main())
