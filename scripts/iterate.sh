#!/usr/bin/env bash
# Iterative pruning (prune a little -> fine-tune -> repeat); every flag goes to yolo_slim.iterate:
#   scripts/iterate.sh --cfg cfg/demo.cfg --weights best.pt --data d.data --rounds 3 \
#       --per-round-flops 0.8 --epochs-per-round 2 --max-drop 0.05 --output-dir runs/iter
# Run the same command again to resume after an interruption.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m yolo_slim.iterate "$@"
