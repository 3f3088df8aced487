#!/usr/bin/env bash
# Stage 0: the built-in synthetic shapes dataset (skipped when DATA points elsewhere or exists).
source "$(dirname "$0")/common.sh"
if [[ -f $DATA ]]; then echo "data: $DATA exists"; exit 0; fi
if [[ $DATA != data/shapes/shapes.data ]]; then echo "error: DATA=$DATA not found" >&2; exit 2; fi
log_run "$PY" -m yolo_slim.data.synthetic --out data/shapes
