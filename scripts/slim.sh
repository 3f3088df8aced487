#!/usr/bin/env bash
# The user's path: a pretrained darknet model and images of the user's scene -> a slim model.
#   make slim CFG=yolov3-tiny.cfg WEIGHTS=yolov3-tiny.weights DATA=my.data [LABELS=teacher]
#             [SPARSE_TARGET=0.5 | SPARSE_SPEEDUP=2] [RUN=runs/slim] [SPARSE_EPOCHS=8] [FT_EPOCHS=4] [SEED=0]
# The stages (WEIGHTS copied as the baseline, sparse training with its KD terms, the free cut,
# fine-tuning, export, REPORT.md) are `yolo-slim pipeline --flow slim`; every default is in
# recipes/slim.json (`yolo-slim pipeline --flow slim --variables` lists them); docs/real-model.md.
source "$(dirname "$0")/common.sh"
pipeline --flow slim "$@"
