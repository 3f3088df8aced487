"""python -m yolo_slim.commands COMMAND ...: the same as the yolo-slim console script."""
from yolo_slim.commands.main import main

if __name__ == "__main__":
    raise SystemExit(main())
